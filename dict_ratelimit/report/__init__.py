"""``dict-ratelimit report``: one participant's month of capacity usage, as text and as a
self-contained HTML page with charts."""
