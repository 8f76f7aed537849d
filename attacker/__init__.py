"""attacker package."""
