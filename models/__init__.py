"""The models of the live half: targets (any Hugging Face causal LM) and the DFlash
draft. ``models.draft`` holds the draft, ``models.draft_config`` its config.json format,
``models.checkpoint`` the safetensors layout, ``models.loading`` the loaders and the
tiny random pair used by tests."""
