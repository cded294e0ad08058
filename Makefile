# muxd — build, run and test. `make run` and `make check` install missing
# Debian packages first (scripts/install-deps).

CC      ?= cc
PKGS    := libevent libevent_extra gnutls libnghttp2 libngtcp2 libngtcp2_crypto_gnutls libnghttp3 inih
BUILD   ?= build
OPT     ?= -O2

ifeq ($(SANITIZE),1)
BUILD   := build/sanitize
OPT     := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g $(OPT) -Isrc \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null)

SRCS      := $(wildcard src/*.c src/*/*.c)
OBJS      := $(SRCS:%.c=$(BUILD)/%.o)
LIB_OBJS  := $(filter-out $(BUILD)/src/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
UNIT_HELPERS := $(BUILD)/tests/unit/harness.o
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all run check lint unit integration deps clean format bench fuzz fuzz-merge deb

H3ORIGIN := $(BUILD)/tests/h3origin

all: $(BUILD)/muxd $(H3ORIGIN)

$(BUILD)/muxd: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c $(wildcard src/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# The unit tests' shared scaffolding, linked into every unit test binary.
$(UNIT_HELPERS): tests/unit/harness.c tests/unit/harness.h $(wildcard src/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags check) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c tests/unit/harness.h $(LIB_OBJS) $(UNIT_HELPERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags check) $(LDFLAGS) -o $@ $< $(UNIT_HELPERS) $(LIB_OBJS) \
	    $(LDLIBS) $(shell pkg-config --libs check)

# Fuzz targets replayed over their seed corpus plus random inputs (a plain
# driver; `make fuzz` runs them under libFuzzer with clang).
# The integration tests' scriptable HTTP/3 origin (not part of muxd).
$(H3ORIGIN): tests/h3origin/h3origin.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/driver.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz/driver.c $(LIB_OBJS) $(LDLIBS)

# Link seams (ld --wrap) of the exchange's tests: its pool is the test's own
# fake (tests/unit/test_exchange.c, tests/fuzz/fuzz_body_relay.c; the client
# connection is a fake owner table they pass); production code is linked
# unchanged.
comma := ,
EXCHANGE_SEAMS := $(foreach f,pool_start_stream pool_wait_cancel pool_altsvc_learned,\
    -Wl$(comma)--wrap=$(f))
$(BUILD)/tests/test_exchange $(BUILD)/fuzz/fuzz_body_relay: LDFLAGS += $(EXCHANGE_SEAMS)
# ... and calloc, to see what an exchange or an h2 stream zeroes (their cost tests)
$(BUILD)/tests/test_exchange $(BUILD)/tests/test_h2: LDFLAGS += -Wl$(comma)--wrap=calloc
# The HTTP/2 client session's tests: its exchanges are the test's fakes
# (tests/unit/test_h2_session.c, tests/fuzz/fuzz_h2_session.c).
H2_SESSION_SEAMS := $(foreach f,exchange_start exchange_client_read exchange_client_drain \
    exchange_abort exchange_awaits_client,-Wl$(comma)--wrap=$(f))
$(BUILD)/tests/test_h2_session $(BUILD)/fuzz/fuzz_h2_session: LDFLAGS += $(H2_SESSION_SEAMS)

# The benchmarks' delay relay (bench/compare, bench/fresh, bench/h3;
# tests/integration/test_delay_relay.py): libevent only.
$(BUILD)/bench/delay_relay: bench/delay_relay.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(shell pkg-config --libs libevent)

# bench/compare's direct HTTP/3 reference: gtlsclient with muxd's UDP
# receive buffer (LD_PRELOAD shim, bench/udp_rcvbuf.c); never sanitized: it
# is loaded into a program that is not.
$(BUILD)/bench/udp_rcvbuf.so: bench/udp_rcvbuf.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -fPIC -shared -o $@ $< -ldl

# Benchmark programs over the library (run by bench/run).
$(BUILD)/bench/%: bench/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJS) $(LDLIBS)

deps:
	@scripts/install-deps

run:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/muxd

unit: $(UNIT_BINS) $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done
	@set -e; for f in $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%); do \
	    echo "== $$f"; $$f 20000 tests/fuzz/corpus/$$(basename $$f | sed 's/^fuzz_//'); done

# Includes point down the layer order (docs/architecture.md).
lint:
	/usr/bin/python3 tests/check_includes.py

integration: $(BUILD)/muxd $(H3ORIGIN) $(BUILD)/bench/delay_relay $(BUILD)/bench/udp_rcvbuf.so
	MUXD_BIN=$(abspath $(BUILD)/muxd) MUXD_H3ORIGIN=$(abspath $(H3ORIGIN)) MUXD_SANITIZE=$(SANITIZE) \
	    MUXD_DELAY_RELAY=$(abspath $(BUILD)/bench/delay_relay) \
	    MUXD_RCVBUF_SHIM=$(abspath $(BUILD)/bench/udp_rcvbuf.so) \
	    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration

check:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

# bench/compare: muxd side by side with squid, haproxy and tinyproxy (one
# table; QUICK=1 for a short run), then the local CA's leaf issue time and
# the client-facing TLS handshake (bench/tls, against gnutls-serv);
# SOAK=1 adds bench/soak (load with reloads, then slowloris).
bench:
	@scripts/install-deps --bench
	@$(MAKE) --no-print-directory all $(BUILD)/bench/ca_issue $(BUILD)/bench/tls_hs $(BUILD)/bench/delay_relay \
	    $(BUILD)/bench/udp_rcvbuf.so
	MUXD_BIN=$(CURDIR)/$(BUILD)/muxd bench/compare
	$(BUILD)/bench/ca_issue 200
	MUXD_BIN=$(CURDIR)/$(BUILD)/muxd bench/tls
	@if [ "$(SOAK)" = 1 ]; then MUXD_BIN=$(CURDIR)/$(BUILD)/muxd bench/soak; fi

# libFuzzer (clang, ASan+UBSan): `make fuzz FUZZ_SECONDS=N` runs every target
# for N seconds, one after the other, and stops at the first crash (written to
# build/libfuzzer/crash-NAME-*). The seeds in tests/fuzz/corpus/NAME are only
# read; new inputs go to build/libfuzzer/corpus/NAME, and `make fuzz-merge`
# adds those that reach new code edges to the seeds (minimised: libFuzzer
# -merge=1, with hit counts not counted as new coverage).
FUZZ_SECONDS ?= 60
LF        := build/libfuzzer
LF_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Isrc \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) \
             -fsanitize=address,undefined -fno-sanitize-recover=undefined
LF_OBJS   := $(filter-out $(LF)/src/main.o,$(SRCS:%.c=$(LF)/%.o))
LF_BINS   := $(FUZZ_SRCS:tests/fuzz/%.c=$(LF)/%)
.SECONDARY: $(LF_OBJS)

$(LF)/src/%.o: src/%.c $(wildcard src/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	clang $(LF_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(LF)/fuzz_%: tests/fuzz/fuzz_%.c $(LF_OBJS)
	clang $(LF_CFLAGS) -fsanitize=fuzzer $(LF_LDFLAGS) -o $@ $< $(LF_OBJS) $(LDLIBS)
$(LF)/fuzz_body_relay: LF_LDFLAGS += $(EXCHANGE_SEAMS)
$(LF)/fuzz_h2_session: LF_LDFLAGS += $(H2_SESSION_SEAMS)

fuzz: $(LF_BINS)
	@set -e; for b in $(LF_BINS); do n=$${b##*/fuzz_}; mkdir -p $(LF)/corpus/$$n; \
	    echo "== $$b: $(FUZZ_SECONDS) s"; \
	    $$b -max_total_time=$(FUZZ_SECONDS) -timeout=25 -print_final_stats=1 \
	        -artifact_prefix=$(LF)/crash-$$n- $(LF)/corpus/$$n tests/fuzz/corpus/$$n; done

fuzz-merge: $(LF_BINS)
	@set -e; for b in $(LF_BINS); do n=$${b##*/fuzz_}; [ -d $(LF)/corpus/$$n ] || continue; \
	    echo "== $$b: merge into tests/fuzz/corpus/$$n"; \
	    $$b -merge=1 -use_counters=0 tests/fuzz/corpus/$$n $(LF)/corpus/$$n; done

# The Debian package (debian/): dpkg-buildpackage runs on a copy of the tree
# (it writes its outputs to the parent directory and its work files under
# debian/), and the .deb, .buildinfo and .changes end up in DEBDIR; the source
# tree is left as it was. DEB_BUILD_OPTIONS=nocheck skips the unit tests. The
# package build never inherits this make's variables (SANITIZE=1, BUILD=...).
DEBDIR ?= build/deb
DEB_WORK = $(abspath $(DEBDIR))/work

deb:
	@$(MAKE) --no-print-directory deps
	rm -rf $(DEB_WORK) && mkdir -p $(DEB_WORK)/muxd
	tar -C $(CURDIR) --exclude=./build --exclude=./.git --exclude=__pycache__ -cf - . | tar -xf - -C $(DEB_WORK)/muxd
	cd $(DEB_WORK)/muxd && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SANITIZE -u BUILD \
	    dpkg-buildpackage -us -uc -b -Jauto
	mv -f $(DEB_WORK)/*.deb $(DEB_WORK)/*.buildinfo $(DEB_WORK)/*.changes $(abspath $(DEBDIR))/
	rm -rf $(DEB_WORK)
	@ls $(abspath $(DEBDIR))/*.deb

format:
	clang-format -i src/*.c src/*.h src/*/*.c src/*/*.h tests/unit/*.c tests/fuzz/*.c tests/fuzz/*.h bench/*.c

clean:
	rm -rf build

# Install: the binary, the example configuration (never over an existing one),
# the systemd units (ExecStart= pointing at the installed binary) and the man
# pages. `make uninstall` removes exactly those; the configuration only when it
# is still the one install put there (unchanged).
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)

.PHONY: install uninstall

install: $(BUILD)/muxd
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man8 \
	    $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(SYSCONFDIR)/muxd
	install -m 755 $(BUILD)/muxd $(DESTDIR)$(SBINDIR)/muxd
	sed 's|@SBINDIR@|$(SBINDIR)|g' systemd/muxd.service >$(DESTDIR)$(UNITDIR)/muxd.service.tmp
	chmod 644 $(DESTDIR)$(UNITDIR)/muxd.service.tmp
	mv -f $(DESTDIR)$(UNITDIR)/muxd.service.tmp $(DESTDIR)$(UNITDIR)/muxd.service
	install -m 644 systemd/muxd.socket $(DESTDIR)$(UNITDIR)/muxd.socket
	install -m 644 man/muxd.8 $(DESTDIR)$(MANDIR)/man8/muxd.8
	install -m 644 man/muxd.conf.5 $(DESTDIR)$(MANDIR)/man5/muxd.conf.5
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf ]; then \
	    echo "keeping the existing $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf"; \
	else \
	    echo "install -m 644 conf/muxd.conf $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf"; \
	    install -m 644 conf/muxd.conf $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf; \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/muxd $(DESTDIR)$(UNITDIR)/muxd.service \
	    $(DESTDIR)$(UNITDIR)/muxd.socket $(DESTDIR)$(MANDIR)/man8/muxd.8 \
	    $(DESTDIR)$(MANDIR)/man5/muxd.conf.5
	@if [ -f $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf ] && \
	    cmp -s conf/muxd.conf $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf; then \
	    echo "rm -f $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf"; \
	    rm -f $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf; \
	elif [ -e $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf ]; then \
	    echo "keeping $(DESTDIR)$(SYSCONFDIR)/muxd/muxd.conf (changed or not installed by make install)"; \
	fi
	-rmdir $(DESTDIR)$(SYSCONFDIR)/muxd 2>/dev/null || true
