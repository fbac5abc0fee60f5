//! Command, reply, function and event codes (zk-protocol.md §3, §10).

// Session and device control.
pub const CMD_CONNECT: u16 = 1000;
pub const CMD_EXIT: u16 = 1001;
pub const CMD_ENABLEDEVICE: u16 = 1002;
pub const CMD_DISABLEDEVICE: u16 = 1003;
pub const CMD_RESTART: u16 = 1004;
pub const CMD_POWEROFF: u16 = 1005;
pub const CMD_REFRESHDATA: u16 = 1013;
pub const CMD_REFRESHOPTION: u16 = 1014;
pub const CMD_GET_VERSION: u16 = 1100;
pub const CMD_AUTH: u16 = 1102;
pub const CMD_REG_EVENT: u16 = 500;
pub const CMD_STARTVERIFY: u16 = 60;
pub const CMD_CANCELCAPTURE: u16 = 62;

// Information.
pub const CMD_OPTIONS_RRQ: u16 = 11;
pub const CMD_OPTIONS_WRQ: u16 = 12;
pub const CMD_GET_FREE_SIZES: u16 = 50;
pub const CMD_GET_PINWIDTH: u16 = 69;
pub const CMD_GET_TIME: u16 = 201;
pub const CMD_SET_TIME: u16 = 202;

// Data.
pub const CMD_DB_RRQ: u16 = 7;
pub const CMD_USER_WRQ: u16 = 8;
pub const CMD_USERTEMP_RRQ: u16 = 9;
pub const CMD_ATTLOG_RRQ: u16 = 13;
pub const CMD_CLEAR_DATA: u16 = 14;
pub const CMD_CLEAR_ATTLOG: u16 = 15;
pub const CMD_DELETE_USER: u16 = 18;
pub const CMD_OPLOG_RRQ: u16 = 34;
pub const CMD_PREPARE_DATA: u16 = 1500;
pub const CMD_DATA: u16 = 1501;
pub const CMD_FREE_DATA: u16 = 1502;
/// `_CMD_PREPARE_BUFFER` in pyzk, `CMD_DATA_WRRQ` in the SDK: start a buffered read.
pub const CMD_PREPARE_BUFFER: u16 = 1503;
/// `_CMD_READ_BUFFER` in pyzk, `CMD_DATA_RDY` in the SDK: read one chunk.
pub const CMD_READ_BUFFER: u16 = 1504;

// Replies.
pub const CMD_ACK_OK: u16 = 2000;
pub const CMD_ACK_ERROR: u16 = 2001;
pub const CMD_ACK_DATA: u16 = 2002;
pub const CMD_ACK_RETRY: u16 = 2003;
pub const CMD_ACK_REPEAT: u16 = 2004;
pub const CMD_ACK_UNAUTH: u16 = 2005;
pub const CMD_ACK_UNKNOWN: u16 = 0xFFFF;
pub const CMD_ACK_ERROR_CMD: u16 = 0xFFFD;
pub const CMD_ACK_ERROR_INIT: u16 = 0xFFFC;
pub const CMD_ACK_ERROR_DATA: u16 = 0xFFFB;

// Function codes for the buffered read.
pub const FCT_ATTLOG: i32 = 1;
pub const FCT_FINGERTMP: i32 = 2;
pub const FCT_OPLOG: i32 = 4;
pub const FCT_USER: i32 = 5;

// Realtime event flags (also the `session_id` field of event packets).
pub const EF_ATTLOG: u16 = 1;
pub const EF_FINGER: u16 = 2;
pub const EF_ENROLLUSER: u16 = 4;
pub const EF_ENROLLFINGER: u16 = 8;
pub const EF_BUTTON: u16 = 16;
pub const EF_UNLOCK: u16 = 32;
pub const EF_VERIFY: u16 = 128;
pub const EF_FPFTR: u16 = 256;
pub const EF_ALARM: u16 = 512;

// Sizes (§2.3).
/// Largest chunk requested per `CMD_READ_BUFFER` over TCP.
pub const MAX_CHUNK_TCP: u32 = 0xFFC0;
/// Largest chunk requested per `CMD_READ_BUFFER` over UDP (pyzk's choice, the safer one).
pub const MAX_CHUNK_UDP: u32 = 16 * 1024;
/// Payload bytes per `CMD_DATA` frame in every recording.
pub const DATA_PACKET_SIZE: u32 = 1008;
/// Default port of the terminals.
pub const DEFAULT_PORT: u16 = 4370;
