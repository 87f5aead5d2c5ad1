# Effectors: the adapters that turn the engine's actions into changes to the world. Each one
# builds plain data with pure functions (nft_rules) and applies it in one step (nft); nothing here
# decides policy — that lives in guardian/engine/.
