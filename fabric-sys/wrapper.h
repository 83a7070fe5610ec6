/* What kvprobe binds from libfabric: the discovery calls behind `fi_info`
 * (fi_getinfo, fi_freeinfo, fi_dupinfo, fi_version, fi_strerror) and the
 * structures they fill.
 *
 * The functions are not bound as extern declarations: kvprobe resolves each
 * one at a fixed symbol version with dlvsym (see src/lib.rs), so bindgen is
 * given their pointer types instead, taken from the declarations themselves
 * with __typeof__ so the signatures cannot drift from the header. */
#include <rdma/fabric.h>
#include <rdma/fi_errno.h>

typedef __typeof__(fi_getinfo) *kvprobe_fi_getinfo_t;
typedef __typeof__(fi_freeinfo) *kvprobe_fi_freeinfo_t;
typedef __typeof__(fi_dupinfo) *kvprobe_fi_dupinfo_t;
typedef __typeof__(fi_version) *kvprobe_fi_version_t;
typedef __typeof__(fi_strerror) *kvprobe_fi_strerror_t;
