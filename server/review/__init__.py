"""The ops review queue: flagged answers, decisions with an audit trail, corrections."""
