"""Motus: the tri-model video/action/understanding transformer and everything its training recipes need."""
