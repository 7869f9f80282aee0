"""The one path from a store to evaluated models and a served artifact."""
