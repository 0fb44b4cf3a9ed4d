/* In-process memory servers on 127.0.0.1 (port 0) for integration tests. */
#ifndef GVM_TEST_SERVERS_H
#define GVM_TEST_SERVERS_H

#include <pthread.h>
#include <stdio.h>

#include "giantvm_memserver.h"

#define TEST_MAX_SERVERS 8

static struct gvm_memserver *test_srv[TEST_MAX_SERVERS];
static pthread_t test_srv_thr[TEST_MAX_SERVERS];
static char test_node_names[TEST_MAX_SERVERS][32];
static const char *test_nodes[TEST_MAX_SERVERS];

static void *test_srv_main(void *a)
{
	gvm_memserver_run(a);
	return NULL;
}

/* Start n servers (once); their "127.0.0.1:PORT" names are in test_nodes. */
static int test_servers_up(int n)
{
	struct gvm_memserver_opts o = { .listen = { "127.0.0.1:0" }, .n_listen = 1 };

	for (int i = 0; i < n; i++) {
		if (test_srv[i])
			continue;
		if (gvm_memserver_open(&test_srv[i], &o))
			return -1;
		snprintf(test_node_names[i], sizeof(test_node_names[i]), "127.0.0.1:%d",
			 gvm_memserver_port(test_srv[i], 0));
		test_nodes[i] = test_node_names[i];
		if (pthread_create(&test_srv_thr[i], NULL, test_srv_main, test_srv[i]))
			return -1;
	}
	return 0;
}

static void test_servers_down(void)
{
	for (int i = 0; i < TEST_MAX_SERVERS; i++) {
		if (!test_srv[i])
			continue;
		gvm_memserver_stop(test_srv[i]);
		pthread_join(test_srv_thr[i], NULL);
		gvm_memserver_close(test_srv[i]);
		test_srv[i] = NULL;
	}
}

#endif
