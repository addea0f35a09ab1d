"""evtwin.grid."""
