# The two commands of the README. Both create .venv with the interpreter named by PYTHON.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# the training and prediction tests run again on every other Keras backend installed by the
# test extra (JAX); `make test-backend BACKEND=torch` runs them on any backend you installed
BACKEND_TESTS := tests/test_training.py tests/test_synchronous.py tests/test_callbacks.py \
	tests/test_predictors.py tests/test_ml.py tests/test_models.py tests/test_reliability.py \
	tests/test_connect.py tests/test_devices.py tests/test_replica.py tests/test_local_session.py
BACKEND_SELECT := not killed and not diverging and not ctrl_c
BACKEND ?= jax

.PHONY: demo test test-backend lint api clean java

java:
	@command -v java >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/java" ] || { \
	  echo "error: Spark needs Java 17: install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2; exit 1; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo: $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

$(VENV)/.test: $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: java $(VENV)/.demo
	$(BIN)/python examples/mnist.py --trainer ADAG --workers 2 --epochs 5

test: java $(VENV)/.test
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-backend BACKEND=jax

test-backend: java $(VENV)/.test
	KERAS_BACKEND=$(BACKEND) $(BIN)/python -m pytest $(PYTEST_ARGS) -k "$(BACKEND_SELECT)" \
	  $(BACKEND_TESTS)

lint: $(VENV)/.test
	$(BIN)/ruff check distkeras tests bench examples docs

api: $(VENV)/.test
	$(BIN)/python docs/gen_api.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache spark-warehouse
