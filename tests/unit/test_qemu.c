/* What `giantvm run` reads from QEMU: parsers fed QEMU 7.2/8.x output, and
 * the matching of RAM blocks to the preload library's mappings. */
#include <unistd.h>

#include "qemu.h"
#include "test.h"

static const char ramblock_72[] =
	"              Block Name    PSize              Offset               Used              Total\r\n"
	"                  pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000\r\n"
	"                vga.vram    4 KiB  0x0000000020080000 0x0000000001000000 0x0000000001000000\r\n"
	"    /rom@etc/acpi/tables    4 KiB  0x0000000021100000 0x0000000000020000 0x0000000000200000\r\n";

static const char ramblock_80[] =
	"              Block Name    PSize              Offset               Used              Total                HVA  RO\r\n"
	"                    mem0    4 KiB  0x0000000000000000 0x0000000140000000 0x0000000140000000 0x00007f12ebe00000  rw\r\n";

static int test_parse_ramblocks_72(void)
{
	struct run_ram r[8];
	int n = gvm_parse_ramblocks(ramblock_72, r, 8);

	CHECK_EQ(n, 3);
	CHECK(!strcmp(r[0].name, "pc.ram"));
	CHECK_EQ(r[0].size, 0x20000000);
	CHECK_EQ(r[0].hva, 0);
	CHECK_EQ(r[2].size, 0x200000); /* Total (max_length), not Used */
	return 0;
}

static int test_parse_ramblocks_80_hva(void)
{
	struct run_ram r[8];
	int n = gvm_parse_ramblocks(ramblock_80, r, 8);

	CHECK_EQ(n, 1);
	CHECK_EQ(r[0].size, 0x140000000ull); /* 5 GiB: above 4 GiB */
	CHECK_EQ(r[0].hva, 0x7f12ebe00000ull);
	CHECK_EQ(gvm_parse_ramblocks("garbage\n", r, 8), -EINVAL);
	return 0;
}

static int test_parse_memdevs(void)
{
	const char *j = "{\"return\": [{\"dump\": true, \"prealloc\": false, \"share\": false, "
			"\"host-nodes\": [], \"size\": 268435456, \"merge\": true, \"policy\": \"default\", "
			"\"id\": \"m0\"}, {\"share\": true, \"size\": 268435456, \"host-nodes\": [0, 1], \"id\": \"m1\"}]}";
	struct run_ram r[4];

	CHECK_EQ(gvm_parse_memdevs(j, r, 4), 2);
	CHECK(!strcmp(r[0].name, "m0") && r[0].size == 268435456 && !r[0].shared);
	CHECK(!strcmp(r[1].name, "m1") && r[1].shared);
	CHECK_EQ(gvm_parse_memdevs("{\"return\": []}", r, 4), 0);
	CHECK(gvm_parse_memdevs("{\"error\": {}}", r, 4) < 0);
	CHECK(gvm_parse_memdevs("{\"return\": [{\"id\": \"x\"}]}", r, 4) < 0); /* no size */
	return 0;
}

static int test_match_by_size(void)
{
	struct run_ram b[2] = { { .name = "pc.ram", .size = 512u << 20 } };
	struct run_cand c[3] = { { 0x1000000, 16u << 20 }, { 0x7f0000000000, 512u << 20 }, { 0x2000000, 2u << 20 } };
	char err[256];

	CHECK_EQ(gvm_run_match(b, 1, c, 3, err, sizeof(err)), 0);
	CHECK_EQ(b[0].hva, 0x7f0000000000ull);
	return 0;
}

static int test_match_refuses_missing_and_ambiguous(void)
{
	struct run_ram b[1] = { { .name = "pc.ram", .size = 16u << 20 } };
	struct run_cand two[2] = { { 0x1000000, 16u << 20 }, { 0x3000000, 16u << 20 } };
	struct run_cand none[1] = { { 0x1000000, 8u << 20 } };
	char err[256];

	CHECK_EQ(gvm_run_match(b, 1, two, 2, err, sizeof(err)), -EEXIST); /* ambiguous */
	CHECK(strstr(err, "cannot tell"));
	b[0].hva = 0;
	CHECK_EQ(gvm_run_match(b, 1, none, 1, err, sizeof(err)), -ENOENT);
	CHECK(strstr(err, "no matching mapping"));
	return 0;
}

static int test_match_numa_same_size_and_shared(void)
{
	struct run_ram b[2] = { { .name = "m0", .size = 256u << 20 }, { .name = "m1", .size = 256u << 20 } };
	struct run_cand c[2] = { { 0x10000000, 256u << 20 }, { 0x30000000, 256u << 20 } };
	char err[256];

	CHECK_EQ(gvm_run_match(b, 2, c, 2, err, sizeof(err)), 0);
	CHECK(b[0].hva && b[1].hva && b[0].hva != b[1].hva);
	b[1].shared = 1;
	CHECK_EQ(gvm_run_match(b, 2, c, 2, err, sizeof(err)), -EPERM);
	CHECK(strstr(err, "share=on"));
	return 0;
}

static int test_qemu_args(void)
{
	char *a1[] = { "qemu", "-m", "1G", "-enable-kvm" };
	char *a2[] = { "qemu", "-machine", "pc,accel=kvm:tcg" };
	char *a3[] = { "qemu", "-device", "vfio-pci,host=01:00.0", "-smp", "cpus=6,sockets=1" };
	char *a4[] = { "qemu", "--accel", "tcg", "-S" };
	char err[256];

	/* KVM only, no /dev/kvm: refused before QEMU starts, naming the reason. */
	CHECK(gvm_qemu_accel(4, a1, GVM_KVM_NONE, "no /dev/kvm", err, sizeof(err)) == NULL);
	CHECK(strstr(err, "KVM") && strstr(err, "no /dev/kvm"));
	/* Given explicitly: passed as given; a doubtful KVM is a warning, a usable one is silent. */
	CHECK(!strcmp(gvm_qemu_accel(4, a1, GVM_KVM_USABLE, "ok", err, sizeof(err)), "") && !err[0]);
	CHECK(!strcmp(gvm_qemu_accel(4, a1, GVM_KVM_DOUBTFUL, "kvm_pvm", err, sizeof(err)), ""));
	CHECK(strstr(err, "passed as given") && strstr(err, "kvm_pvm"));
	CHECK(!strcmp(gvm_qemu_accel(3, a2, GVM_KVM_NONE, "x", err, sizeof(err)), "") && !err[0]);
	CHECK(!strcmp(gvm_qemu_accel(3, a2, GVM_KVM_DOUBTFUL, "kvm_pvm", err, sizeof(err)), "") && err[0]);
	/* Not given: KVM only where it can run the guest. */
	CHECK(!strcmp(gvm_qemu_accel(5, a3, GVM_KVM_NONE, "x", err, sizeof(err)), "tcg"));
	CHECK(!strcmp(gvm_qemu_accel(5, a3, GVM_KVM_DOUBTFUL, "x", err, sizeof(err)), "tcg") && !err[0]);
	CHECK(!strcmp(gvm_qemu_accel(5, a3, GVM_KVM_USABLE, "x", err, sizeof(err)), "kvm"));
	CHECK(!strcmp(gvm_qemu_accel(4, a4, GVM_KVM_DOUBTFUL, "x", err, sizeof(err)), "") && !err[0]);
	CHECK(gvm_qemu_has_vfio(5, a3));
	CHECK(!gvm_qemu_has_vfio(4, a1));
	CHECK_EQ(gvm_qemu_smp(5, a3), 6);
	CHECK_EQ(gvm_qemu_smp(4, a1), 1);
	CHECK(gvm_qemu_has_arg(4, a4, "-S"));
	CHECK(!gvm_qemu_has_arg(4, a1, "-S"));
	return 0;
}

/* VFIO in every form QEMU takes (libvirt writes JSON). */
static int test_vfio_forms(void)
{
	char *a[][3] = {
		{ "qemu", "-device", "vfio-pci,host=0000:01:00.0,id=hostdev0" },
		{ "qemu", "-device", "driver=vfio-pci,host=01:00.0" },
		{ "qemu", "--device", "vfio-pci-nohotplug,host=01:00.0" },
		{ "qemu", "-device", "{\"driver\":\"vfio-pci\",\"host\":\"0000:06:00.0\",\"id\":\"hostdev0\",\"bus\":\"pci.0\",\"addr\":\"0x3\"}" },
		{ "qemu", "-device", "{ \"id\": \"h0\", \"driver\" : \"vfio-pci\" }" },
		{ "qemu", "-device=vfio-ap,sysfsdev=/sys/devices/vfio_ap/matrix/x" },
	};
	char *ok[][3] = {
		{ "qemu", "-device", "virtio-net-pci,id=vfio-pci" },          /* an id, not the driver */
		{ "qemu", "-device", "{\"driver\":\"virtio-blk-pci\",\"id\":\"vfio-pci\"}" },
		{ "qemu", "-netdev", "user,id=vfio-pci" },
		{ "qemu", "-append", "driver=vfio-pci" },
	};

	for (size_t i = 0; i < sizeof(a) / sizeof(a[0]); i++)
		CHECK(gvm_qemu_has_vfio(a[i][2] ? 3 : 2, a[i]) == 1);
	CHECK(gvm_qemu_has_vfio(2, a[5]) == 1);
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		CHECK(gvm_qemu_has_vfio(3, ok[i]) == 0);
	return 0;
}

static int test_mem_lock_forms(void)
{
	char *on[][3] = {
		{ "qemu", "-overcommit", "mem-lock=on" },
		{ "qemu", "--overcommit", "cpu-pm=off,mem-lock=on" },
		{ "qemu", "-overcommit", "mem-lock=on-fault" },
		{ "qemu", "-realtime", "mlock=on" },
		{ "qemu", "-overcommit", "mem-lock=yes" },
	};
	char *off[][3] = {
		{ "qemu", "-overcommit", "mem-lock=off" },
		{ "qemu", "-overcommit", "cpu-pm=on" },
		{ "qemu", "-realtime", "mlock=off" },
		{ "qemu", "-append", "mem-lock=on" },
	};
	char *eq[] = { "qemu", "-overcommit=mem-lock=on" };

	for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++)
		CHECK(gvm_qemu_mem_lock(3, on[i]) == 1);
	for (size_t i = 0; i < sizeof(off) / sizeof(off[0]); i++)
		CHECK(gvm_qemu_mem_lock(3, off[i]) == 0);
	CHECK(gvm_qemu_mem_lock(2, eq) == 1);
	return 0;
}

/* What libvirt 9 runs to probe, and what it runs for a domain. */
static int test_probe_and_name(void)
{
	char *probe[] = { "qemu", "-S", "-no-user-config", "-nodefaults", "-nographic", "-machine",
			  "none,accel=kvm:tcg", "-qmp", "unix:/var/lib/libvirt/qemu/qmp-X/qmp.monitor,server=on,wait=off",
			  "-pidfile", "/var/lib/libvirt/qemu/qmp-X/qmp.pid", "-daemonize" };
	char *ver[] = { "qemu", "--version" };
	char *help[] = { "qemu", "-device", "help" };
	char *dom[] = { "qemu", "-name", "guest=gvm-test,,x,debug-threads=on", "-S", "-machine",
			"pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram", "-accel", "tcg",
			"-m", "512", "-object", "{\"qom-type\":\"memory-backend-ram\",\"id\":\"pc.ram\",\"size\":536870912}" };
	char *plain[] = { "qemu", "-name", "demo", "-M", "pc" };
	char *none[] = { "qemu", "-m", "256" };
	char name[64], why[256];

	CHECK(gvm_qemu_is_probe(12, probe));
	CHECK(gvm_qemu_is_probe(2, ver));
	CHECK(gvm_qemu_is_probe(3, help));
	CHECK(!gvm_qemu_is_probe(12, dom));
	CHECK(!gvm_qemu_is_probe(5, plain));
	CHECK_EQ(gvm_qemu_vm_name(12, dom, name, sizeof(name)), 0);
	CHECK(!strcmp(name, "gvm-test,x"));
	CHECK_EQ(gvm_qemu_vm_name(5, plain, name, sizeof(name)), 0);
	CHECK(!strcmp(name, "demo"));
	CHECK_EQ(gvm_qemu_vm_name(3, none, name, sizeof(name)), -ENOENT);
	CHECK_EQ(gvm_qemu_local_ram(12, dom, why, sizeof(why)), 0);
	return 0;
}

/* <memoryBacking> variants: only private anonymous RAM can be attached early. */
static int test_local_ram_forms(void)
{
	char *bad[][3] = {
		{ "qemu", "-mem-path", "/dev/hugepages/libvirt/qemu" },
		{ "qemu", "-object", "{\"qom-type\":\"memory-backend-file\",\"id\":\"pc.ram\",\"mem-path\":\"/dev/hugepages\",\"size\":536870912}" },
		{ "qemu", "-object", "{\"qom-type\":\"memory-backend-memfd\",\"id\":\"pc.ram\",\"size\":536870912}" },
		{ "qemu", "-object", "{\"qom-type\":\"memory-backend-ram\",\"id\":\"pc.ram\",\"share\":true,\"size\":536870912}" },
		{ "qemu", "-object", "memory-backend-ram,id=m0,size=512M,share=on" },
		{ "qemu", "-object", "qom-type=memory-backend-memfd,id=m0,size=512M" },
	};
	char *good[][3] = {
		{ "qemu", "-object", "{\"qom-type\":\"memory-backend-ram\",\"id\":\"pc.ram\",\"share\":false,\"size\":1}" },
		{ "qemu", "-object", "memory-backend-ram,id=m0,size=512M" },
		{ "qemu", "-object", "{\"qom-type\":\"secret\",\"id\":\"s0\",\"data\":\"x\"}" },
	};
	char why[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(gvm_qemu_local_ram(3, bad[i], why, sizeof(why)) == 1);
		CHECK(strstr(why, "pool"));
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK(gvm_qemu_local_ram(3, good[i], why, sizeof(why)) == 0);
	return 0;
}


/* giantvm-qemu.conf: defaults, values, and errors naming file:line. */
static int test_wrapper_conf(void)
{
	static struct gvm_wrapper_conf c;
	char path[] = "/tmp/gvm-test-wconf.XXXXXX", err[PATH_MAX + 512];
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	close(fd);
	unlink(path);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), 0); /* missing: defaults */
	CHECK(!c.found && !c.pool[0] && !strcmp(c.qemu, "/usr/bin/qemu-system-x86_64"));
	CHECK(!strcmp(c.run_dir, GVM_WRAPPER_RUN_DIR) && !strcmp(c.log_dir, GVM_WRAPPER_RUN_DIR));
	CHECK_EQ(test_write_text(path, "# example\n\npool = /etc/giantvm/cluster_uffd.conf  # the pool\n"
				 "token-file=/etc/giantvm/token\nlocal-mem = 256M\nreplicas = 2\nprefetch = 8\n"
				 "log-dir = /var/log/giantvm\nqemu = /opt/qemu/bin/qemu-system-x86_64\n"), 0);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), 0);
	CHECK(c.found && !strcmp(c.pool, "/etc/giantvm/cluster_uffd.conf") && !strcmp(c.token, "/etc/giantvm/token"));
	CHECK(!strcmp(c.local_mem, "256M") && c.replicas == 2 && c.prefetch == 8);
	CHECK(!strcmp(c.log_dir, "/var/log/giantvm") && !strcmp(c.qemu, "/opt/qemu/bin/qemu-system-x86_64"));
	CHECK_EQ(test_write_text(path, "pool = /p\n\nprefetch = 3\n"), 0);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), -1);
	CHECK(strstr(err, path) && strstr(err, ":3: prefetch '3'"));
	CHECK_EQ(test_write_text(path, "pool = /p\npools = /q\n"), 0);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), -1);
	CHECK(strstr(err, ":2: unknown key 'pools'"));
	CHECK_EQ(test_write_text(path, "pool\n"), 0);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), -1);
	CHECK(strstr(err, ":1: 'pool': want KEY = VALUE"));
	CHECK_EQ(test_write_text(path, "pool = relative.conf\n"), 0);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), -1);
	CHECK(strstr(err, ":1: 'relative.conf': an absolute path"));
	CHECK_EQ(test_write_text(path, "local-mem = 1M\n"), 0);
	CHECK_EQ(gvm_wrapper_conf_parse(path, &c, err, sizeof(err)), -1);
	CHECK(strstr(err, ":1: local-mem"));
	unlink(path);
	return 0;
}

static int test_json_helpers(void)
{
	char s[] = "a\\r\\nb\\\"c\\\\d";
	double v;

	gvm_json_unescape(s);
	CHECK(!strcmp(s, "a\r\nb\"c\\d"));
	CHECK_EQ(gvm_json_number("{\"faults\": 12, \"x\":3}", "faults", &v), 0);
	CHECK(v == 12);
	CHECK(gvm_json_number("{\"faults_x\": 12}", "faults", &v) < 0);
	return 0;
}

static const struct gvm_test tests[] = {
	{ "parse_ramblocks_72", test_parse_ramblocks_72 },
	{ "parse_ramblocks_80_hva", test_parse_ramblocks_80_hva },
	{ "parse_memdevs", test_parse_memdevs },
	{ "match_by_size", test_match_by_size },
	{ "match_refuses_missing_and_ambiguous", test_match_refuses_missing_and_ambiguous },
	{ "match_numa_same_size_and_shared", test_match_numa_same_size_and_shared },
	{ "qemu_args", test_qemu_args },
	{ "json_helpers", test_json_helpers },
	{ "vfio_forms", test_vfio_forms },
	{ "mem_lock_forms", test_mem_lock_forms },
	{ "probe_and_name", test_probe_and_name },
	{ "local_ram_forms", test_local_ram_forms },
	{ "wrapper_conf", test_wrapper_conf },
};
GVM_TEST_MAIN(tests)
