"""The owner's dashboard: the agent pages and the owner's "stop all".

It sits above the apps it shows (DESIGN.md): an agent page puts together the agent
(agents) and its model calls (the gateway's usage ledger), so it lives here, where
neither app has to import the other. Billing's own pages stay in billing.
"""
