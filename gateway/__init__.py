"""The gateway: authenticates outside callers with API keys, passes every
service RPC through unchanged with a signed principal token, answers health
for each upstream from the upstream itself, and manages API keys."""
