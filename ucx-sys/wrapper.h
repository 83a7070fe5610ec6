/* What kvprobe binds from UCX: the UCP API (contexts, workers, endpoints,
 * memory mapping, remote keys, RMA, request and endpoint queries) and the UCT
 * component / memory-domain / transport-resource queries behind `ucx_info -d`. */
#include <ucp/api/ucp.h>
#include <uct/api/uct.h>
