// Test support: DNS answers built byte by byte, the way a name server writes them,
// for the unit tests of >>dns and the SRV name server tests/discovery.cpp runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace test_dns {

struct srv {
  std::uint16_t priority, weight, port;
  std::string target;
};
struct host {
  std::string name;
  std::vector<std::uint8_t> bytes;  // 4 (A) or 16 (AAAA)
};

inline void put16(std::string& m, unsigned v) {
  m.push_back(static_cast<char>((v >> 8) & 0xff));
  m.push_back(static_cast<char>(v & 0xff));
}
inline void put_name(std::string& m, const std::string& name) {
  std::size_t start = 0;
  while (start < name.size()) {
    std::size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    m.push_back(static_cast<char>(dot - start));
    m.append(name, start, dot - start);
    start = dot + 1;
  }
  m.push_back('\0');
}

// The name and type a query asks for, and its id; false when `q` is not a query.
inline bool read_query(const std::string& q, std::uint16_t& id, std::string& name, std::uint16_t& type) {
  if (q.size() < 17) return false;
  id = static_cast<std::uint16_t>((static_cast<unsigned char>(q[0]) << 8) | static_cast<unsigned char>(q[1]));
  name.clear();
  std::size_t at = 12;
  while (at < q.size() && q[at] != 0) {
    std::size_t len = static_cast<unsigned char>(q[at]);
    if (at + 1 + len > q.size()) return false;
    if (!name.empty()) name.push_back('.');
    name.append(q, at + 1, len);
    at += 1 + len;
  }
  if (at + 5 > q.size()) return false;
  type = static_cast<std::uint16_t>((static_cast<unsigned char>(q[at + 1]) << 8) | static_cast<unsigned char>(q[at + 2]));
  return true;
}

// An answer to (id, name, SRV): the SRV records (owner names compressed to the
// question when `compress`), then the hosts' A/AAAA records as additional records.
inline std::string answer(std::uint16_t id, const std::string& name, const std::vector<srv>& services,
                          const std::vector<host>& hosts = {}, bool compress = true, int rcode = 0,
                          bool truncated = false) {
  std::string m;
  put16(m, id);
  put16(m, 0x8180u | (truncated ? 0x0200u : 0u) | static_cast<unsigned>(rcode));  // QR RD RA
  put16(m, 1);
  put16(m, static_cast<unsigned>(services.size()));
  put16(m, 0);
  put16(m, static_cast<unsigned>(hosts.size()));
  put_name(m, name);
  put16(m, 33);
  put16(m, 1);
  for (const srv& s : services) {
    if (compress) put16(m, 0xc00c);  // the question's name, at offset 12
    else put_name(m, name);
    put16(m, 33);
    put16(m, 1);
    put16(m, 0);
    put16(m, 30);  // TTL
    std::string rdata;
    put16(rdata, s.priority);
    put16(rdata, s.weight);
    put16(rdata, s.port);
    put_name(rdata, s.target);
    put16(m, static_cast<unsigned>(rdata.size()));
    m += rdata;
  }
  for (const host& h : hosts) {
    put_name(m, h.name);
    put16(m, h.bytes.size() == 4 ? 1 : 28);
    put16(m, 1);
    put16(m, 0);
    put16(m, 30);
    put16(m, static_cast<unsigned>(h.bytes.size()));
    for (std::uint8_t b : h.bytes) m.push_back(static_cast<char>(b));
  }
  return m;
}

}  // namespace test_dns
