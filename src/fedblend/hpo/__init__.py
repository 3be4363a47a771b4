"""fedblend.hpo"""
