"""The learning core: pure Python (numpy, gymnasium, torch), no Django imports."""
