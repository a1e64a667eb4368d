"""The gallery: faces indexed from photos or brought as descriptors, versions derived from a record, erasure."""
