"""Slack as an approval channel: `messages` renders holds as Block Kit (pure), `channel` posts
them and turns button clicks into reviews (Socket Mode or signed HTTP interactivity).

May import `approvals.hold`, `approvals.desk` and `config.slack_settings`.
"""
