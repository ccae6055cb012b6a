"""Recipe cards as data (one YAML per method); read by ``clipadapt.methods.recipe_cards``."""
