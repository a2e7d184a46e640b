"""The Slack bot: Slack events and interactions onto the one chat path and the feedback service."""
