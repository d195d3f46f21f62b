"""Coverage-guided fuzz harnesses (atheris/libFuzzer), one module per parser; run them with scripts/fuzz."""
