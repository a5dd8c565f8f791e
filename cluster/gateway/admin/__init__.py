"""The admin API's routes (admin keys only, audited): adapters."""
