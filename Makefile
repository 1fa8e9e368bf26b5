# The two commands of the README: `make demo` and `make test`. Both set everything up first.
.PHONY: setup demo test lint peer-env meta-env gguf-env slow

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m fixtures.demo

lint: setup
	.venv/bin/ruff check streamconv fixtures tests benchmarks scripts
	.venv/bin/mypy

# The bit-for-bit comparison with transformers' own script needs transformers 4.47.1 in a venv of
# its own; if it cannot be built, those tests skip and say why.
peer-env:
	bash scripts/make_peer_env.sh || echo "warning: .venv-peer could not be built; its tests will skip"

# Meta's own Llama 4 reference code (llama-models + fairscale) for the Llama 4 oracle tests; if it
# cannot be built, those tests skip and say why.
meta-env:
	bash scripts/make_meta_env.sh

# llama.cpp itself (llama-cpp-python 0.3.36 built from its sdist, GGML_NATIVE=OFF, with the
# convert_hf_to_gguf.py it vendors) for the GGUF oracle tests; if it cannot be built, those tests
# skip and say why. The first build compiles llama.cpp (minutes) into a wheel cache; later venvs
# install that wheel.
gguf-env:
	bash scripts/make_gguf_env.sh

# -rs lists every skip with its reason. Locally an oracle test (one needing .venv-peer,
# .venv-meta or .venv-gguf) may skip; .ci/run sets STREAMCONV_REQUIRE_ORACLES=1, which turns
# those skips into failures (tests/conftest.py, oracle_unavailable).
test: setup peer-env meta-env gguf-env lint
	.venv/bin/python -m pytest -q -rs
	@echo "make test: skipped tests are listed above with their reasons; CI (.ci/run, STREAMCONV_REQUIRE_ORACLES=1) fails instead when an oracle test skips"

slow: setup
	.venv/bin/python -m pytest -q -m slow
