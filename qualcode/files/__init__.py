"""Every read or write of an analyst's file: tables, predictions and labels contracts, locks,
atomic writes, and pseudonymisation of what is read."""
