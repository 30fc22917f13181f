"""Governance built into the system: model registry (lineage and integrity), retention
purge, explanations, audit reports, and the documents that describe them
(CHECKLIST_GOUVERNANCE.md, MODEL_CARD.md, DATASHEET.md, RGPD.md, EXPLAINABILITY.md)."""
