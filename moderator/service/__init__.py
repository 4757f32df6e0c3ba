"""`moderator serve`: the process that joins the consumer group and answers events."""
