/* A Modbus TCP server on libmodbus (Debian libmodbus-dev), for gridedge's interop tests.
 *
 *   libmodbus_server PORT [SIZE]      listens on 127.0.0.1:PORT; each table has SIZE entries (default
 *                                     1000): a read past them gets libmodbus' own ILLEGAL_DATA_ADDRESS.
 * Commands on stdin, one per line, each acknowledged with "ok" on stdout:
 *   hr|ir|co|di ADDR V...             set holding / input registers, coils, discrete inputs from ADDR
 *   exc FC ADDR COUNT CODE            answer a read of FC touching ADDR..ADDR+COUNT-1 with exception CODE
 *   hang 0|1                          1: read requests and never answer them (a hung device)
 *   clear                             no exceptions, no hang
 * Prints "listening PORT" once it accepts connections. Serves several clients at once (select loop). */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EXC 64
static struct { int fc, addr, count, code; } excs[MAX_EXC];
static int n_exc = 0, hang = 0;
static modbus_mapping_t *map;

static void command(char *line) {
    char *tok[130];
    int n = 0;
    for (char *t = strtok(line, " \t\r\n"); t && n < 130; t = strtok(NULL, " \t\r\n")) tok[n++] = t;
    if (n == 0) return;
    if (!strcmp(tok[0], "hang") && n == 2) {
        hang = atoi(tok[1]);
    } else if (!strcmp(tok[0], "clear")) {
        n_exc = 0, hang = 0;
    } else if (!strcmp(tok[0], "exc") && n == 5 && n_exc < MAX_EXC) {
        excs[n_exc].fc = atoi(tok[1]), excs[n_exc].addr = atoi(tok[2]);
        excs[n_exc].count = atoi(tok[3]), excs[n_exc].code = atoi(tok[4]);
        n_exc++;
    } else if (n >= 3) {
        int addr = atoi(tok[1]);
        for (int i = 2; i < n; i++, addr++) {
            long v = strtol(tok[i], NULL, 0);
            if (!strcmp(tok[0], "hr") && addr < map->nb_registers) map->tab_registers[addr] = (uint16_t)v;
            else if (!strcmp(tok[0], "ir") && addr < map->nb_input_registers) map->tab_input_registers[addr] = (uint16_t)v;
            else if (!strcmp(tok[0], "co") && addr < map->nb_bits) map->tab_bits[addr] = v != 0;
            else if (!strcmp(tok[0], "di") && addr < map->nb_input_bits) map->tab_input_bits[addr] = v != 0;
        }
    }
    printf("ok\n");
    fflush(stdout);
}

static int exception_for(const uint8_t *q, int hl) {
    int fc = q[hl], addr = (q[hl + 1] << 8) | q[hl + 2], count = (q[hl + 3] << 8) | q[hl + 4];
    for (int i = 0; i < n_exc; i++)
        if (excs[i].fc == fc && addr < excs[i].addr + excs[i].count && excs[i].addr < addr + count)
            return excs[i].code;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [SIZE]\n", argv[0]);
        return 2;
    }
    int size = argc > 2 ? atoi(argv[2]) : 1000;
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[1]));
    map = modbus_mapping_new(size, size, size, size);
    int listener = ctx && map ? modbus_tcp_listen(ctx, 16) : -1;
    if (listener < 0) {
        fprintf(stderr, "cannot listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    printf("listening %s\n", argv[1]);
    fflush(stdout);
    fd_set all;
    FD_ZERO(&all);
    FD_SET(listener, &all);
    FD_SET(0, &all);
    int maxfd = listener;
    char line[8192];
    size_t used = 0;
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    for (;;) {
        fd_set rd = all;
        if (select(maxfd + 1, &rd, NULL, NULL, NULL) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (FD_ISSET(0, &rd)) {
            ssize_t got = read(0, line + used, sizeof line - 1 - used);
            if (got <= 0) return 0; /* the test went away: stop */
            used += (size_t)got;
            char *nl;
            while ((nl = memchr(line, '\n', used)) != NULL) {
                *nl = 0;
                size_t len = (size_t)(nl - line) + 1;
                command(line);
                memmove(line, line + len, used - len);
                used -= len;
            }
        }
        if (FD_ISSET(listener, &rd)) {
            int fd = accept(listener, NULL, NULL);
            if (fd >= 0) {
                FD_SET(fd, &all);
                if (fd > maxfd) maxfd = fd;
            }
        }
        for (int fd = 1; fd <= maxfd; fd++) {
            if (fd == listener || !FD_ISSET(fd, &rd)) continue;
            modbus_set_socket(ctx, fd);
            int rc = modbus_receive(ctx, query);
            if (rc > 0) {
                int code = exception_for(query, modbus_get_header_length(ctx));
                if (hang) continue;
                if (code) modbus_reply_exception(ctx, query, code);
                else modbus_reply(ctx, query, rc, map);
            } else if (rc < 0) {
                close(fd);
                FD_CLR(fd, &all);
            }
        }
    }
}
