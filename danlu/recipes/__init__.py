"""Recipes: world-specific runners on top of the library (the `danlu demo` stages and what they train).

Each recipe wires library pieces to the embedded worlds (data/world/, data/pictures.py): bert.py (MLM + NSP
pretraining and classification on world sentences), seq2seq.py (the English -> Chinese translator), vision.py
(ViT, CLIP and diffusion on the picture world), align_stages.py (SFT, reward, DPO, PPO, GRPO on world tasks)
and demo.py (the stages in order, report.md + metrics.json). Nothing in the library imports this package;
the CLI (danlu/cli/) sits beside it on top. See docs/ARCHITECTURE.md, "Layers".
"""
