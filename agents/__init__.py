"""evtwin.agents."""
