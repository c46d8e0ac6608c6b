"""BERT size presets (hidden, layers, heads): the BERT paper's base/large and Turc et al.'s
smaller models. Apart from the model code so that configs and ``--help`` need no torch."""

PRESETS = {
    "tiny": (128, 2, 2),
    "mini": (256, 4, 4),
    "small": (512, 4, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
