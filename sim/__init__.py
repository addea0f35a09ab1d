"""evtwin.sim."""
