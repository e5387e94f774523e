"""seqio task registrations."""
