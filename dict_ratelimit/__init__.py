"""dict-ratelimit: watches DICT token buckets of a Pix participant before they run dry."""

__version__ = "0.1.0"
