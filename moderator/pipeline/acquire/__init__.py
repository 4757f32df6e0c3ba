"""Acquire an event's image: inline bytes as they are, URLs through a fetcher that refuses
private, loopback and metadata addresses at connect time (`guard`) and bounds size and time
(`fetch`)."""
