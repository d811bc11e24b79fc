// A uWebSockets pub/sub server that publishes synthetic market data in tickgate's binary
// WebSocket format (docs/PROTOCOL.md), so tickgate-tools' load probe can measure it the way
// it measures tickgate (docs/bench/fanout_vs.sh). See README.md next to this file.
//
// Usage: pubsub PORT MSGS_PER_TOPIC_PER_SEC
//
// One thread. 16 topics named like tickgate's channels, book.<SYM> and trades.<SYM> of the
// 8 default symbols. A 1 ms timer publishes to each topic one binary frame holding the
// messages due since the last tick; message k of a topic is due at
// start + (k + topic/16) / rate (topics are spread over the period) and carries that due
// time as its timestamp (wall clock, ns since the Unix epoch: the probe's latency is its
// receipt wall-clock time minus this). Sequences per topic are contiguous from 1.
//
// Protocol subset: GET /ws; a welcome text frame on open; `subscribe` answered with
// `subscribed` and, per channel, an empty snapshot at the channel's current sequence (so the
// first delta a client sees follows it); `ping` answered with `pong`. Anything else gets an
// error. Requests are read with a minimal parser that expects compact JSON (as the probe's
// serde_json writes it).
#include "App.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <string_view>

namespace {

constexpr int kSymbols = 8, kTopics = 2 * kSymbols;
constexpr const char *kSymbol[kSymbols] = {"BTC-USD", "ETH-USD", "SOL-USD",  "XRP-USD",
                                           "DOGE-USD", "ADA-USD", "AVAX-USD", "LINK-USD"};
// Price and quantity precisions and reference prices of tickgate's default markets.
constexpr int kPricePrecision[kSymbols] = {2, 2, 2, 4, 5, 4, 2, 3};
constexpr int kQtyPrecision[kSymbols] = {4, 3, 2, 1, 0, 1, 2, 2};
constexpr int64_t kReference[kSymbols] = {6500000, 350000, 15000, 6000, 15000, 4500, 3500, 15000};
enum : uint8_t { BOOK_SNAPSHOT = 1, BOOK_DELTA = 2, TRADE = 4, TRADES_SNAPSHOT = 5 };
constexpr uint8_t FLAG_SNAPSHOT = 2;

struct Topic {
    std::string name;  // "book.BTC-USD"
    int symbol;
    bool book;         // book deltas, else trades
    uint32_t channel;  // tickgate's channel id: instrument index * 4 + kind (1 book, 3 trades)
    uint64_t seq = 0;  // last sequence published
} topics[kTopics];

struct Conn {};  // uWS wants per-socket data; we keep none
using WS = uWS::WebSocket<false, true, Conn>;

uint64_t wallNs() {
    timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return uint64_t(t.tv_sec) * 1000000000u + uint64_t(t.tv_nsec);
}

void put(std::string &out, uint64_t v, int bytes) {  // little-endian
    for (int i = 0; i < bytes; i++) out.push_back(char(v >> (8 * i)));
}

void header(std::string &out, uint8_t type, uint8_t flags, uint16_t bodyLen, uint32_t channel,
            uint64_t seq, uint64_t ts) {
    put(out, type, 1), put(out, flags, 1), put(out, bodyLen, 2), put(out, channel, 4);
    put(out, seq, 8), put(out, ts, 8);
}

// Message `seq` of `t`: a book delta (side, 7 zero bytes, price, qty) or a trade (price,
// qty, taker side, 7 zero bytes, maker order id, taker order id).
void message(std::string &out, const Topic &t, uint64_t seq, uint64_t ts) {
    int64_t ref = kReference[t.symbol];
    uint64_t side = seq & 1, k = seq % 20;
    if (t.book) {
        header(out, BOOK_DELTA, 0, 24, t.channel, seq, ts);
        put(out, side, 8);
        put(out, uint64_t(side ? ref + 1 + int64_t(k) : ref - 1 - int64_t(k)), 8);
        put(out, 1 + seq % 1000, 8);
    } else {
        header(out, TRADE, 0, 40, t.channel, seq, ts);
        put(out, uint64_t(ref), 8), put(out, 1 + seq % 100, 8), put(out, side, 8);
        put(out, 2 * seq, 8), put(out, 2 * seq + 1, 8);
    }
}

// The raw JSON value after `"key":` in a compact object (a number, or a string with its
// quotes), or "" if absent. Good enough for the probe's requests, not a JSON parser.
std::string_view field(std::string_view msg, std::string_view key) {
    size_t at = msg.find("\"" + std::string(key) + "\":");
    if (at == std::string_view::npos) return {};
    std::string_view v = msg.substr(at + key.size() + 3);
    if (v.empty()) return {};
    size_t end = v[0] == '"' ? v.find('"', 1) + 1 : v[0] == '[' ? v.find(']') + 1 : v.find_first_of(",}");
    return v.substr(0, end == std::string_view::npos ? v.size() : end);
}

void onMessage(WS *ws, std::string_view msg, uWS::OpCode op) {
    if (op != uWS::OpCode::TEXT) return ws->end(1003, "text frames only");
    std::string_view id = field(msg, "id"), reqOp = field(msg, "op");
    std::string idJson = id.empty() ? "null" : std::string(id);
    auto error = [&](const char *code) {
        ws->send("{\"op\":\"error\",\"id\":" + idJson + ",\"code\":\"" + code + "\",\"message\":\"" +
                     code + "\"}", uWS::OpCode::TEXT);
    };
    if (reqOp == "\"ping\"") {
        ws->send("{\"op\":\"pong\",\"id\":" + idJson + ",\"ts\":" + std::to_string(wallNs()) + "}",
                 uWS::OpCode::TEXT);
        return;
    }
    if (reqOp != "\"subscribe\"") return error("unknown_op");
    // All or nothing: resolve every named channel first.
    std::string_view list = field(msg, "channels");
    int wanted[kTopics], n = 0;
    for (size_t at = list.find('"'); at != std::string_view::npos; at = list.find('"', at)) {
        size_t end = list.find('"', at + 1);
        if (end == std::string_view::npos) break;
        std::string_view name = list.substr(at + 1, end - at - 1);
        int i = 0;
        while (i < kTopics && topics[i].name != name) i++;
        if (i == kTopics) return error("unknown_channel");
        if (n < kTopics) wanted[n++] = i;
        at = end + 1;
    }
    if (n == 0) return error("malformed");
    std::string reply = "{\"op\":\"subscribed\",\"id\":" + idJson + ",\"channels\":[", snapshots;
    uint64_t now = wallNs();
    for (int j = 0; j < n; j++) {
        const Topic &t = topics[wanted[j]];
        reply += std::string(j ? "," : "") + "{\"channel\":\"" + t.name + "\",\"channel_id\":" +
                 std::to_string(t.channel) + ",\"seq\":" + std::to_string(t.seq) +
                 ",\"price_precision\":" + std::to_string(kPricePrecision[t.symbol]) +
                 ",\"qty_precision\":" + std::to_string(kQtyPrecision[t.symbol]) + "}";
        // An empty book (u16 0 bids, u16 0 asks, u32 0) or no recent trades (u32 0, u32 0).
        header(snapshots, t.book ? BOOK_SNAPSHOT : TRADES_SNAPSHOT, FLAG_SNAPSHOT, 8, t.channel,
               t.seq, now);
        put(snapshots, 0, 8);
    }
    ws->send(reply + "]}", uWS::OpCode::TEXT);
    ws->send(snapshots, uWS::OpCode::BINARY);
    // Published frames reach a subscriber only from its subscription on, and the timer
    // runs on this thread: the first delta after the snapshot has its seq + 1.
    for (int j = 0; j < n; j++) ws->subscribe(topics[wanted[j]].name);
}

uWS::App *app;
double periodNs;
uint64_t startNs, dropped, droppedReported, ticks;

void tick(us_timer_t *) {
    uint64_t now = wallNs();
    std::string frame;
    for (int i = 0; i < kTopics; i++) {
        Topic &t = topics[i];
        frame.clear();
        for (;;) {  // message seq + 1 is due at start + (seq + i/16) * period
            uint64_t due = startNs + uint64_t((double(t.seq) + double(i) / kTopics) * periodNs);
            if (due > now) break;
            message(frame, t, ++t.seq, due);
        }
        if (!frame.empty()) app->publish(t.name, frame, uWS::OpCode::BINARY, false);
    }
    if (++ticks % 1000 == 0 && dropped != droppedReported) {
        fprintf(stderr, "pubsub: %llu frames dropped so far (backpressure over 1 MiB)\n",
                (unsigned long long) (droppedReported = dropped));
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 3 || atoi(argv[1]) <= 0 || atof(argv[2]) <= 0) {
        fprintf(stderr, "usage: %s PORT MSGS_PER_TOPIC_PER_SEC\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    periodNs = 1e9 / atof(argv[2]);
    for (int s = 0; s < kSymbols; s++) {
        topics[2 * s] = {std::string("book.") + kSymbol[s], s, true, uint32_t(s * 4 + 1)};
        topics[2 * s + 1] = {std::string("trades.") + kSymbol[s], s, false, uint32_t(s * 4 + 3)};
    }
    uWS::App server;
    server.ws<Conn>("/ws", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 4096,
        .maxBackpressure = 1024 * 1024,
        .open = [](WS *ws) {
            ws->send("{\"op\":\"welcome\",\"id\":null,\"version\":1,\"format\":\"binary\","
                     "\"heartbeat_interval_ms\":5000,\"ping_interval_ms\":20000,"
                     "\"subscriptions_max\":64,\"message_bytes_max\":4096}", uWS::OpCode::TEXT);
        },
        .message = onMessage,
        .dropped = [](WS *, std::string_view, uWS::OpCode) { dropped++; },
    });
    server.listen(port, [port](us_listen_socket_t *listening) {
        if (!listening) {
            fprintf(stderr, "pubsub: cannot listen on port %d\n", port);
            exit(1);
        }
        fprintf(stderr, "pubsub: listening on port %d\n", port);
    });
    app = &server;
    startNs = wallNs();
    us_timer_t *timer = us_create_timer((us_loop_t *) uWS::Loop::get(), 0, 0);
    us_timer_set(timer, tick, 1, 1);
    server.run();
}
