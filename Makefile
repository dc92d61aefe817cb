# Makefile for lava: a PGXS build of the extension plus the two commands
# (`make demo`, `make test`) and the benchmark targets.

EXTENSION = lava
EXTVERSION = 0.1.0

MODULE_big = lava
OBJS = src/lava.o src/keys.o src/keyload.o src/ratelimit.o src/errors.o src/http.o src/session.o src/state.o src/worker.o src/enqueue.o src/direct.o src/record.o src/plans.o src/outbox.o

# The install script is assembled from the pieces in sql/install/, in order
# (pgvector-style: the versioned script is built, upgrade scripts are kept).
SQL_PIECES = $(sort $(wildcard sql/install/*.sql))
DATA_built = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA = $(wildcard sql/$(EXTENSION)--*--*.sql)

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
CURL_CFLAGS := $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS := $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)

PG_CPPFLAGS += $(CURL_CFLAGS)
PG_CFLAGS += -Wall -Wextra -Werror -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
SHLIB_LINK += $(CURL_LIBS)

EXTRA_CLEAN = results regression.diffs regression.out test/isolation/results \
	test/isolation/output_iso

# No LLVM bitcode: it needs clang, which a fresh machine may not have.
override with_llvm = no

# PGXS only exists once postgresql-server-dev-15 is installed; `make test`
# and `make demo` install it first and then re-enter make.
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
endif

sql/$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PIECES)
	cat $^ > $@

.PHONY: deps test demo bench soak

deps:
	@bash test/deps.sh

test: deps
	@$(MAKE) --no-print-directory all install
	@bash test/run-tests.sh

demo: deps
	@$(MAKE) --no-print-directory all install
	@bash test/demo.sh

# `make bench`: the performance figures against same-run baselines, one table
# (test/bench/run.sh; BENCH=drain,enqueue,... runs a subset).  `make soak`:
# SOAK_SECONDS (600) of steady mixed load; fails on memory growth, stranded
# requests or counters that differ from the ledger (test/bench/soak.sh).
bench:
	@bash test/deps.sh
	@$(MAKE) --no-print-directory all install
	@bash test/bench/run.sh

soak:
	@bash test/deps.sh
	@$(MAKE) --no-print-directory all install
	@bash test/bench/soak.sh
