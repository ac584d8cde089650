"""Analyses of a graph: counting params and MACs, channel groups, importance, the savings report."""
