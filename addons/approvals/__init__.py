"""Held requests and their reviews.

`hold`: the approval state machine of one held request (pure). `desk`: holds requests on
asyncio futures until a channel's reviewers decide. `shared_holds`: holds, reviews, approval
windows and Slack message references in the replicas' shared state store (PostgreSQL), one
transaction per change. `page`: the gateway's own approvals page and API. `slack/`: the Slack
channel (messages and transport). `addon`: the mitmproxy side.

May import `config`, `state`, `request`, `masking`, `policy` and the top-level `metrics`.
"""
