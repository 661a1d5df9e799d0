"""CLI sub-command groups; each module registers its parsers on ``nars``'s subparsers."""
