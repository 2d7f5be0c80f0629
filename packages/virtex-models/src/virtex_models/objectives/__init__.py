"""The objectives, one module each; every module registers itself with
:func:`virtex_models.registry.register` and :mod:`virtex_models.registry` imports them all on its
first lookup. A new objective is a new module here (ARCHITECTURE.md, "How to add an
objective")."""
