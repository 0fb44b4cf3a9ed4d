/* What `giantvm run` reads from QEMU: parsers fed QEMU 7.2/8.x output, and
 * the matching of RAM blocks to the preload library's mappings. */
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
};
GVM_TEST_MAIN(tests)
