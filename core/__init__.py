"""Pieces every part of spendgate shares: settings, the error catalog."""
