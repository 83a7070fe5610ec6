//! The control channel between an initiator and a target.
//!
//! Bytes move through NIXL; this channel only coordinates: the handshake
//! (session token, versions), target setup (its agent metadata travels here),
//! filling / poisoning / verifying the target's buffer between transfers, and
//! counting the notifications the target received.
//!
//! Wire format: a 4-byte big-endian length, then one JSON message. Every read
//! has a timeout; a closed or silent peer is an error that says which step
//! was waiting.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::mem::Verify;
use crate::nixl::AgentConfig;

/// Protocol version; both sides must agree.
pub const PROTOCOL: u32 = 5;

/// Largest message accepted (metadata of a big registration is a few MB at most).
const MAX_MESSAGE: u32 = 64 << 20;

/// Requests the initiator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First message: authenticate and compare versions.
    Hello {
        /// The session token the target printed or was given.
        token: String,
        /// [`PROTOCOL`].
        protocol: u32,
        /// kvprobe version of the initiator.
        kvprobe: String,
    },
    /// Create the agent and backend, allocate and register the buffer.
    Setup(Box<TargetSetup>),
    /// Write the pattern for `seed` into the target buffer.
    Fill {
        /// Offset in the target buffer.
        off: u64,
        /// Length.
        len: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// Fill a range with the poison byte.
    Poison {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// Raw UCX side: connect an endpoint back to the initiator's worker, as
    /// ucx_perftest's server does. UCX's adaptive progress polls only the
    /// interfaces an endpoint of the worker uses; without one of its own the
    /// target handles incoming TCP RMA through its async thread, at about
    /// half the rate (docs/results/perftest-2026-11-24.md).
    UcxConnect {
        /// The initiator's UCP worker address, hex.
        worker_address_hex: String,
    },
    /// Flip one byte (fault injection used by kvprobe's self-tests).
    Corrupt {
        /// Offset.
        off: u64,
    },
    /// Zero a range (fault injection: blocks that arrive as zeros).
    Zero {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// Check a range against the pattern.
    Verify {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
        /// Pattern seed.
        seed: u64,
        /// Check block by block, counting bad blocks (0: as one block).
        #[serde(default)]
        block: u64,
    },
    /// Wait until `count` notifications carrying `tag` have arrived.
    WaitNotifs {
        /// The message the transfers carry.
        tag: String,
        /// How many are expected in total for this tag.
        count: u64,
        /// Give up after this long.
        timeout_ms: u64,
        /// Once `count` is reached, wait this long and look again, so that
        /// duplicates arriving late are counted too.
        #[serde(default)]
        settle_ms: u64,
    },
    /// KV mode: write the pattern of a request (or, with `poison`, the poison
    /// byte) into the prefill blocks `ids` (block k of the request is block
    /// `ids[k]` of every region); every head of each block the request moves.
    KvFill {
        /// Input length of the request (sliding layers move fewer blocks).
        isl: u64,
        /// Prefill block id of each request block.
        ids: Vec<u64>,
        /// Pattern seed of the request.
        seed: u64,
        /// Poison instead of the pattern.
        #[serde(default)]
        poison: bool,
    },
    /// KV mode: check the decode rank's head slice of the prefill blocks
    /// `ids` against the request's pattern (after a WRITE).
    KvVerify {
        /// Input length of the request.
        isl: u64,
        /// Prefill block id of each request block.
        ids: Vec<u64>,
        /// Pattern seed of the request.
        seed: u64,
    },
    /// Plain TCP stream test of the path between the two processes (the
    /// link's capacity, for the verdict): the target answers `ProbeReady`
    /// with a port on its control address, the sender streams for
    /// `duration_ms`, and the target answers `ProbeDone`.
    LinkProbe {
        /// Initiator to target (true) or target to initiator.
        to_target: bool,
        /// How long the sender streams.
        duration_ms: u64,
    },
    /// One-way (no response): the initiator is alive and busy measuring. Sent
    /// about once a second during a point, so the target's idle timeout only
    /// fires for a peer that is really gone.
    KeepAlive,
    /// End of session: the target releases everything and exits.
    Bye,
}

/// What the target must build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSetup {
    /// Agent settings.
    pub agent: AgentConfig,
    /// Backend plugin (UCX).
    pub backend: String,
    /// Backend parameters beyond NIXL's defaults.
    pub backend_params: BTreeMap<String, String>,
    /// Bytes to allocate and register.
    pub buffer_bytes: u64,
    /// Which backends to build over the buffer.
    pub backends: Vec<BackendKind>,
    /// Raw UCX settings, when `backends` has `ucx`.
    #[serde(default)]
    pub ucx: Option<UcxSetup>,
    /// DRAM buffer on transparent huge pages (false: 4 KiB pages).
    #[serde(default = "yes")]
    pub hugepages: bool,
    /// KV mode: the prefill rank's KV regions to allocate and register too.
    #[serde(default)]
    pub kv: Option<KvSetup>,
    /// The target's memory (its buffer and KV cache).
    #[serde(default)]
    pub target_mem: crate::mem::MemSpec,
    /// The initiator's memory.
    #[serde(default)]
    pub initiator_mem: crate::mem::MemSpec,
    /// The initiator's NIXL agent name: a shared target counts this
    /// session's notifications by it (None: every sender's count).
    #[serde(default)]
    pub initiator_agent: Option<String>,
}

/// The barrier of a TP run (`kvprobe tp`), between the orchestrator and
/// each decode rank's initiator: every rank says it is ready to start a timed
/// loop, and all start when the orchestrator says go, so the rank pairs
/// transfer at the same time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "sync", rename_all = "snake_case")]
pub enum SyncMsg {
    /// Initiator -> orchestrator, first: the run's token and its decode rank.
    Hello {
        /// The token the orchestrator gave (KVPROBE_SYNC_TOKEN).
        token: String,
        /// Decode rank.
        rank: u32,
    },
    /// Orchestrator -> initiator: accepted.
    Welcome,
    /// Initiator -> orchestrator: warmed up, ready to time loop `point`.
    Ready {
        /// The loop's number in the plan (the same on every rank).
        point: u64,
    },
    /// Orchestrator -> initiator: start the timed loop now.
    Go,
    /// Orchestrator -> initiator: the run is over (a rank failed): stop.
    Stop {
        /// Why.
        reason: String,
    },
}

/// The KV cache a side builds: geometry, layer kinds and blocks per region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvSetup {
    /// Per-rank geometry.
    pub geometry: crate::kv::Geometry,
    /// Kind of each layer (sliding layers move fewer blocks).
    pub layer_kinds: Vec<crate::kv::LayerKind>,
    /// Blocks per region.
    pub pool_blocks: u64,
    /// Blocks per region the timed requests use (0: all of them).
    #[serde(default)]
    pub timed_blocks: u64,
    /// First block of the checked requests' area (0: the timed requests' blocks).
    #[serde(default)]
    pub check_base: u64,
}

/// `true`, for serde defaults.
pub fn yes() -> bool {
    true
}

/// How to build the raw UCX side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxSetup {
    /// The libucp to load (the one NIXL links, normally).
    pub lib: std::path::PathBuf,
    /// UCX settings applied with `ucp_config_modify` unless set in the
    /// environment (NIXL's UCX defaults): name, value, and the first UCX
    /// minor version (1.x) that has it.
    pub settings: Vec<(String, String, u32)>,
    /// UCP_ERR_HANDLING_MODE_PEER on endpoints (NIXL's default).
    pub peer_errors: bool,
}

impl UcxSetup {
    /// The settings that apply to UCX `major.minor`.
    pub fn settings_for(&self, (major, minor): (u32, u32)) -> Vec<(String, String)> {
        self.settings
            .iter()
            .filter(|(_, _, min)| major > 1 || minor >= *min)
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Responses from the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Handshake accepted.
    Hello {
        /// Target's kvprobe version.
        kvprobe: String,
        /// Target's host name.
        host: String,
        /// Target's process id.
        pid: u32,
    },
    /// Setup finished.
    SetupDone(Box<TargetReady>),
    /// Done.
    Ok,
    /// Result of a verify.
    Verified(Verify),
    /// Notification count.
    Notifs {
        /// Notifications carrying the tag, in total.
        received: u64,
        /// Other messages seen since the last call (should be none).
        unexpected: Vec<String>,
    },
    /// Answer to `Bye`: the session's resources are released.
    Bye {
        /// Errors met while releasing NIXL objects on the target.
        drop_errors: Vec<String>,
    },
    /// Link probe: connect to this port of the target's control address.
    ProbeReady {
        /// The port.
        port: u16,
    },
    /// Link probe finished: what the target sent or received.
    ProbeDone {
        /// Bytes.
        bytes: u64,
        /// Seconds from first to last byte (receiver) or of sending (sender).
        seconds: f64,
    },
    /// The request failed on the target.
    Error {
        /// What went wrong there.
        message: String,
    },
}

/// What the target tells the initiator after setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReady {
    /// Address of the buffer in the target's address space.
    pub buffer_addr: u64,
    /// Its length.
    pub buffer_len: u64,
    /// Path of the NIXL library the target loaded.
    pub nixl_lib: String,
    /// UCX_TLS in the target's environment (None: unset).
    pub ucx_tls: Option<String>,
    /// The NIXL side, when built.
    pub nixl: Option<NixlReady>,
    /// The raw UCX side, when built.
    pub ucx: Option<UcxReady>,
    /// KV mode: address of the target's KV buffer (regions at the offsets
    /// [`crate::kv::SideLayout::regions`] gives).
    #[serde(default)]
    pub kv_addr: Option<u64>,
}

/// The target's NIXL side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NixlReady {
    /// Agent name.
    pub agent_name: String,
    /// NIXL metadata, hex-encoded.
    pub metadata_hex: String,
    /// Effective backend parameters.
    pub backend_params: BTreeMap<String, String>,
}

/// The target's raw UCX side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxReady {
    /// Its worker address, hex-encoded.
    pub worker_address_hex: String,
    /// The packed remote key of its buffer, hex-encoded.
    pub rkey_hex: String,
    /// KV mode: the packed remote key of its KV buffer.
    #[serde(default)]
    pub kv_rkey_hex: Option<String>,
    /// The libucp it loaded.
    pub lib: String,
    /// Its UCX version.
    pub version: String,
    /// Settings it applied.
    pub applied: Vec<(String, String)>,
}

/// A transfer engine kvprobe measures: NIXL with one of its network
/// plugins, or UCX's UCP API directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum BackendKind {
    /// NIXL with its UCX plugin (vLLM's NixlConnector default; `nixl` is an alias).
    #[serde(rename = "nixl-ucx", alias = "nixl")]
    NixlUcx,
    /// NIXL with its LIBFABRIC plugin (libfabric's providers: efa, tcp, ...).
    #[serde(rename = "nixl-libfabric")]
    NixlLibfabric,
    /// UCX's UCP API directly: put/get with remote keys, no NIXL.
    #[serde(rename = "ucx")]
    Ucx,
}

impl BackendKind {
    /// Every backend, in the order rows of one point are listed.
    pub const ALL: [BackendKind; 3] = [BackendKind::NixlUcx, BackendKind::NixlLibfabric, BackendKind::Ucx];

    /// The NIXL plugin this backend creates (None: raw UCX).
    pub fn nixl_plugin(self) -> Option<&'static str> {
        match self {
            BackendKind::NixlUcx => Some("UCX"),
            BackendKind::NixlLibfabric => Some("LIBFABRIC"),
            BackendKind::Ucx => None,
        }
    }

    /// Whether the bytes go through NIXL.
    pub fn is_nixl(self) -> bool {
        self.nixl_plugin().is_some()
    }

    /// The engine, as rows record it in `backend`: `nixl` or `ucx`.
    pub fn engine(self) -> &'static str {
        if self.is_nixl() { "nixl" } else { "ucx" }
    }

    /// The name on the command line and in tables: `nixl-ucx`, `nixl-libfabric`, `ucx`.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::NixlUcx => "nixl-ucx",
            BackendKind::NixlLibfabric => "nixl-libfabric",
            BackendKind::Ucx => "ucx",
        }
    }

    /// The backend of a row, from its `backend` and `plugin` fields (rows
    /// written before LIBFABRIC was measured say `nixl` and `UCX`).
    pub fn of_row(backend: &str, plugin: &str) -> Option<BackendKind> {
        match backend {
            "ucx" => Some(BackendKind::Ucx),
            "nixl" if plugin.eq_ignore_ascii_case("LIBFABRIC") => Some(BackendKind::NixlLibfabric),
            "nixl" if plugin.eq_ignore_ascii_case("UCX") || plugin.is_empty() => Some(BackendKind::NixlUcx),
            _ => None,
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nixl" | "nixl-ucx" => Ok(BackendKind::NixlUcx),
            "nixl-libfabric" | "libfabric" => Ok(BackendKind::NixlLibfabric),
            "ucx" => Ok(BackendKind::Ucx),
            _ => Err(format!("unknown backend '{s}' (expected nixl-ucx, nixl-libfabric or ucx; nixl means nixl-ucx)")),
        }
    }
}

/// The NIXL backend parameters for `plugin` out of `--backend-param` values:
/// unscoped keys apply to every NIXL backend, `ucx:KEY` and `libfabric:KEY`
/// only to that plugin (the scope is dropped).
pub fn params_for(plugin: &str, all: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // unscoped first, so a scoped value for this plugin wins
    for (k, v) in all.iter().filter(|(k, _)| !k.contains(':')) {
        out.insert(k.clone(), v.clone());
    }
    for (k, v) in all {
        if let Some((scope, key)) = k.split_once(':') {
            if scope.eq_ignore_ascii_case(plugin) {
                out.insert(key.to_string(), v.clone());
            }
        }
    }
    out
}

/// Control-channel failures, each naming what was being waited for.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Could not connect.
    #[error("cannot connect to the target at {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The peer closed the connection.
    #[error(
        "the peer closed the control connection while kvprobe was waiting for {what} (the peer process exited or crashed; see its log)"
    )]
    Closed {
        /// The step that was waiting.
        what: String,
    },
    /// Nothing arrived in time.
    #[error("no answer from the peer within {timeout:?} while waiting for {what}")]
    Timeout {
        /// The step.
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// Other I/O errors.
    #[error("control channel I/O error while {what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A malformed message.
    #[error("malformed control message ({what}): {detail}")]
    Protocol {
        /// The step.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The peer reported a failure.
    #[error("the target failed: {0}")]
    Remote(String),
}

/// One end of the control channel: a TCP connection driven by a tokio
/// runtime of its own (current-thread), so that every send and receive is
/// bounded by a tokio timer. The API stays blocking: the engine interleaves
/// the channel with UCX progress on one thread, and looks at the socket
/// between progress calls with [`Channel::readable`] (a plain `poll` on the
/// descriptor, which leaves tokio's readiness tracking intact).
#[derive(Debug)]
pub struct Channel {
    rt: tokio::runtime::Runtime,
    stream: tokio::net::TcpStream,
}

/// Control messages are small: a send that takes longer than this means the
/// peer's host is gone (without a bound, TCP retransmits for a quarter hour).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl Channel {
    /// The local and the peer's address of the connection.
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.stream.local_addr()?, self.stream.peer_addr()?))
    }

    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream) -> Result<Channel, PeerError> {
        let io = |source| PeerError::Io { what: "setting up the control channel".into(), source };
        let _ = stream.set_nodelay(true);
        stream.set_nonblocking(true).map_err(io)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(io)?;
        let stream = {
            let _entered = rt.enter();
            tokio::net::TcpStream::from_std(stream).map_err(io)?
        };
        Ok(Channel { rt, stream })
    }

    /// Connects with a timeout.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Channel, PeerError> {
        let err = |source| PeerError::Connect { addr: addr.to_string(), source };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(err)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => return Channel::new(s),
                Err(e) => last = e,
            }
        }
        Err(err(last))
    }

    /// Sends one message (bounded by a one-minute timeout).
    pub fn send<T: Serialize>(&mut self, msg: &T, what: &str) -> Result<(), PeerError> {
        let Channel { rt, stream } = self;
        rt.block_on(async {
            match tokio::time::timeout(SEND_TIMEOUT, write_frame_async(stream, msg, what)).await {
                Ok(r) => r,
                Err(_) => Err(PeerError::Timeout { what: format!("sending {what}"), timeout: SEND_TIMEOUT }),
            }
        })
    }

    /// Whether a message (or the peer's close) is waiting to be read, within
    /// `timeout` (zero: just look).
    pub fn readable(&self, timeout: Duration) -> Result<bool, PeerError> {
        use std::os::fd::AsRawFd;
        let mut fds = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(PeerError::Io { what: "polling the control connection".into(), source: e });
        }
        Ok(n > 0)
    }

    /// Whether the peer has closed the connection (or reset it): looks
    /// without consuming anything, waiting at most `timeout`.
    pub fn peer_closed(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        match self.readable(timeout) {
            Ok(true) => {
                let mut b = [0u8; 1];
                // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the data in place.
                let n = unsafe {
                    libc::recv(self.stream.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
                };
                n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
            }
            Ok(false) => false,
            Err(_) => true,
        }
    }

    /// Receives one message, waiting at most `timeout` (None: forever).
    pub fn recv<T: DeserializeOwned>(&mut self, timeout: Option<Duration>, what: &str) -> Result<T, PeerError> {
        let Channel { rt, stream } = self;
        rt.block_on(async {
            match timeout {
                Some(t) => match tokio::time::timeout(t, read_frame_async(stream, what, MAX_MESSAGE)).await {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::Timeout { what: what.into(), timeout: t }),
                },
                None => read_frame_async(stream, what, MAX_MESSAGE).await,
            }
        })
    }

    /// Sends a request and waits for its response; a target-side error
    /// becomes [`PeerError::Remote`].
    pub fn call(&mut self, req: &Request, timeout: Duration, what: &str) -> Result<Response, PeerError> {
        self.send(req, what)?;
        match self.recv::<Response>(Some(timeout), what)? {
            Response::Error { message } => Err(PeerError::Remote(message)),
            r => Ok(r),
        }
    }
}

/// Hex encoding for metadata blobs.
pub fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// Inverse of [`to_hex`].
pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("odd length".into());
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("bad hex digit {:?}", c as char)),
    };
    s.as_bytes().chunks(2).map(|p| Ok(val(p[0])? << 4 | val(p[1])?)).collect()
}

/// Compares a presented token with the expected one in time independent of
/// where they differ.
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Request {
    /// The message's kind, for error messages (never its content: a hello
    /// carries the token).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Setup(_) => "setup",
            Request::Fill { .. } => "fill",
            Request::Poison { .. } => "poison",
            Request::UcxConnect { .. } => "ucx_connect",
            Request::Corrupt { .. } => "corrupt",
            Request::Zero { .. } => "zero",
            Request::Verify { .. } => "verify",
            Request::WaitNotifs { .. } => "wait_notifs",
            Request::KvFill { .. } => "kv_fill",
            Request::KvVerify { .. } => "kv_verify",
            Request::LinkProbe { .. } => "link_probe",
            Request::KeepAlive => "keep_alive",
            Request::Bye => "bye",
        }
    }
}

/// Reads one framed message (4-byte big-endian length, JSON) from an async
/// stream: `kvprobe serve` checks hellos this way before handing the
/// connection to a target process.
pub async fn read_frame_async<R, T>(r: &mut R, what: &str, max: u32) -> Result<T, PeerError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    use tokio::io::AsyncReadExt;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            PeerError::Closed { what: what.into() }
        }
        _ => PeerError::Io { what: format!("waiting for {what}"), source },
    };
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(io)?;
    let n = u32::from_be_bytes(len);
    if n > MAX_MESSAGE.min(max) {
        return Err(PeerError::Protocol { what: what.into(), detail: format!("announced length {n} is too large") });
    }
    let mut body = vec![0u8; n as usize];
    r.read_exact(&mut body).await.map_err(io)?;
    serde_json::from_slice(&body).map_err(|e| PeerError::Protocol { what: what.into(), detail: e.to_string() })
}

/// Writes one framed message to an async stream.
pub async fn write_frame_async<W, T>(w: &mut W, msg: &T, what: &str) -> Result<(), PeerError>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(msg).map_err(|e| PeerError::Protocol { what: what.into(), detail: e.to_string() })?;
    let len = u32::try_from(body.len()).ok().filter(|&l| l <= MAX_MESSAGE).ok_or_else(|| PeerError::Protocol {
        what: what.into(),
        detail: format!("message of {} bytes is too large", body.len()),
    })?;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => PeerError::Closed { what: what.into() },
        _ => PeerError::Io { what: format!("sending {what}"), source },
    };
    w.write_all(&len.to_be_bytes()).await.map_err(io)?;
    w.write_all(&body).await.map_err(io)?;
    w.flush().await.map_err(io)
}

/// Streams zeros on `s` for `duration`, then closes its sending side.
/// Returns (bytes, seconds).
pub fn probe_send(s: &mut TcpStream, duration: Duration) -> std::io::Result<(u64, f64)> {
    s.set_write_timeout(Some(duration + Duration::from_secs(10)))?;
    let buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        s.write_all(&buf)?;
        bytes += buf.len() as u64;
    }
    s.flush()?;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok((bytes, start.elapsed().as_secs_f64()))
}

/// Receives until the sender closes, giving up after `limit`. Returns
/// (bytes, seconds from the first byte to the last).
pub fn probe_recv(s: &mut TcpStream, limit: Duration) -> std::io::Result<(u64, f64)> {
    s.set_read_timeout(Some(limit))?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let (mut bytes, mut first, mut last) = (0u64, None, start);
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        bytes += n as u64;
        if start.elapsed() > limit {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the link probe's sender never finished"));
        }
    }
    Ok((bytes, first.map_or(0.0, |f| (last - f).as_secs_f64())))
}

/// A random session token (16 bytes from the kernel, hex).
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to time and pid: the token guards against accidents, the
        // listener binds only the address it is given.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b.copy_from_slice(&(t ^ u128::from(std::process::id()) << 64).to_le_bytes());
    }
    to_hex(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_named_as_the_command_line_names_them() {
        assert_eq!("nixl".parse::<BackendKind>(), Ok(BackendKind::NixlUcx));
        assert_eq!("NIXL-UCX".parse::<BackendKind>(), Ok(BackendKind::NixlUcx));
        assert_eq!("nixl-libfabric".parse::<BackendKind>(), Ok(BackendKind::NixlLibfabric));
        assert_eq!("ucx".parse::<BackendKind>(), Ok(BackendKind::Ucx));
        assert!("nixl-verbs".parse::<BackendKind>().unwrap_err().contains("nixl-libfabric"));
        for b in BackendKind::ALL {
            assert_eq!(b.label().parse::<BackendKind>(), Ok(b));
            // serde writes the label; an old "nixl" still reads
            assert_eq!(serde_json::to_string(&b).unwrap(), format!("\"{}\"", b.label()));
            // a row's engine and plugin name the backend back
            assert_eq!(BackendKind::of_row(b.engine(), b.nixl_plugin().unwrap_or("UCP")), Some(b));
        }
        assert_eq!(serde_json::from_str::<BackendKind>("\"nixl\"").unwrap(), BackendKind::NixlUcx);
        // rows written before LIBFABRIC was measured
        assert_eq!(BackendKind::of_row("nixl", "UCX"), Some(BackendKind::NixlUcx));
        assert_eq!(BackendKind::of_row("nixl", "GDS"), None);
    }

    #[test]
    fn backend_params_are_scoped_per_plugin() {
        let all: BTreeMap<String, String> =
            [("num_threads", "4"), ("ucx:ucx_error_handling_mode", "none"), ("libfabric:num_threads", "2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let ucx = params_for("UCX", &all);
        assert_eq!(ucx.get("num_threads").map(String::as_str), Some("4"));
        assert_eq!(ucx.get("ucx_error_handling_mode").map(String::as_str), Some("none"));
        let lf = params_for("LIBFABRIC", &all);
        assert_eq!(lf.get("num_threads").map(String::as_str), Some("2"), "the scoped value wins");
        assert!(!lf.contains_key("ucx_error_handling_mode"));
        assert!(lf.keys().all(|k| !k.contains(':')));
    }
    use std::net::TcpListener;

    #[test]
    fn hex_roundtrip() {
        let v: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&v)).unwrap(), v);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 32);
    }

    #[test]
    fn messages_cross_a_real_socket_and_a_silent_peer_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut ch = Channel::new(s).unwrap();
            let r: Request = ch.recv(Some(Duration::from_secs(5)), "hello").unwrap();
            assert!(matches!(r, Request::Hello { protocol: PROTOCOL, .. }));
            ch.send(&Response::Ok, "ok").unwrap();
            // then stay silent until the client gives up, and close
            std::thread::sleep(Duration::from_millis(400));
        });
        let mut ch = Channel::connect(&addr, Duration::from_secs(2)).unwrap();
        let hello = Request::Hello { token: "t".into(), protocol: PROTOCOL, kvprobe: "x".into() };
        assert!(matches!(ch.call(&hello, Duration::from_secs(5), "hello").unwrap(), Response::Ok));
        let e = ch.call(&Request::Bye, Duration::from_millis(100), "bye").unwrap_err();
        assert!(matches!(e, PeerError::Timeout { .. }), "{e}");
        server.join().unwrap();
        let e = ch.recv::<Response>(Some(Duration::from_secs(2)), "after close").unwrap_err();
        assert!(matches!(e, PeerError::Closed { .. }), "{e}");
        assert!(e.to_string().contains("after close"));
    }
}
