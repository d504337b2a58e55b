/*
 * fault.c - the fault-injection points of fault.h (test builds only).
 *
 * The first call parses $CBD_FAULT once; every call compares the site name
 * (a handful of string compares on rare paths, and only in cbd_fi).
 */
#ifdef CBD_FAULT_INJECTION
#include "fault.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SITES_MAX 64

static struct {
    int parsed;
    char site[64];
    char action[16];
    long hit_at;          /* trigger at this hit */
    long hits;
    int list;
    const char *listed[SITES_MAX];
    int nlisted;
} fault;

static void parse(void)
{
    const char *spec = getenv("CBD_FAULT");
    fault.parsed = 1;
    fault.list = getenv("CBD_FAULT_LIST") != NULL;
    fault.hit_at = 1;
    if (spec == NULL)
        return;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", spec);
    char *site = strtok(buf, ":"), *action = strtok(NULL, ":"), *n = strtok(NULL, ":");
    if (site == NULL || action == NULL) {
        fprintf(stderr, "cbd: CBD_FAULT='%s' is not SITE:ACTION[:N]\n", spec);
        return;
    }
    snprintf(fault.site, sizeof fault.site, "%s", site);
    snprintf(fault.action, sizeof fault.action, "%s", action);
    if (n != NULL)
        fault.hit_at = strtol(n, NULL, 10);
}

static void list_site(const char *site)
{
    for (int i = 0; i < fault.nlisted; i++) {
        if (fault.listed[i] == site || strcmp(fault.listed[i], site) == 0)
            return;
    }
    if (fault.nlisted < SITES_MAX)
        fault.listed[fault.nlisted++] = site;
    fprintf(stderr, "cbd: fault site reached: %s\n", site);
}

void cbd_fault(const char *site)
{
    if (!fault.parsed)
        parse();
    if (fault.list)
        list_site(site);
    if (fault.site[0] == '\0' || strcmp(site, fault.site) != 0 || ++fault.hits != fault.hit_at)
        return;
    fprintf(stderr, "cbd: fault injected at %s: %s\n", site, fault.action);
    fflush(stderr);
    if (strcmp(fault.action, "crash") == 0)
        raise(SIGKILL);
    else if (strcmp(fault.action, "pause") == 0)
        raise(SIGSTOP);
}
#endif
