"""Trust at the boundaries: named keys (``keys``) and signed envelopes (``signing``)."""
