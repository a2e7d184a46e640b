"""Training-data exports in the JSONL shapes TRL's trainers read."""
