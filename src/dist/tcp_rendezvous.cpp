#include "dist/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>

namespace nh {

namespace {

using Clock = std::chrono::steady_clock;

class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

std::string address(const LaunchInfo& info) {
  return info.master_addr + ":" + std::to_string(info.master_port);
}

void send_all(int fd, const void* data, size_t n, const std::string& where) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0)
      throw Error("rendezvous " + where, "send", "a connected peer", std::strerror(errno));
    p += k;
    n -= size_t(k);
  }
}

void recv_all(int fd, void* data, size_t n, const std::string& where) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t k = recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0)
      throw Error("rendezvous " + where, "receive", "a connected peer",
                  k == 0 ? "the connection closed" : std::strerror(errno));
    p += k;
    n -= size_t(k);
  }
}

std::string serve(const LaunchInfo& info, const std::string& payload, int timeout_s) {
  const std::string where = address(info);
  Socket listener(socket(AF_INET6, SOCK_STREAM, 0));
  const bool v6 = listener.fd() >= 0;
  if (!v6) listener = Socket(socket(AF_INET, SOCK_STREAM, 0));
  if (listener.fd() < 0)
    throw Error("rendezvous " + where, "socket", "a socket", std::strerror(errno));
  const int one = 1, zero = 0;
  setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc;
  if (v6) {
    setsockopt(listener.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(uint16_t(info.master_port));
    rc = bind(listener.fd(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(uint16_t(info.master_port));
    rc = bind(listener.fd(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  if (rc != 0 || listen(listener.fd(), 128) != 0)
    throw Error("rendezvous", "MASTER_PORT", "a free port on rank 0's host",
                std::to_string(info.master_port) + " (" + std::strerror(errno) + ")");
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  const uint64_t n = payload.size();
  for (int served = 1; served < info.world_size;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{listener.fd(), POLLIN, 0};
    if (left.count() <= 0 || poll(&p, 1, int(left.count())) == 0)
      throw Error("rendezvous " + where, "ranks",
                  std::to_string(info.world_size - 1) + " to connect",
                  std::to_string(served - 1) + " within " + std::to_string(timeout_s) + " s");
    Socket peer(accept(listener.fd(), nullptr, nullptr));
    if (peer.fd() < 0) continue;
    int32_t rank = -1;
    recv_all(peer.fd(), &rank, sizeof rank, where);
    if (rank <= 0 || rank >= info.world_size)
      throw Error("rendezvous " + where, "rank", "1.." + std::to_string(info.world_size - 1),
                  std::to_string(rank) + " (another job on this port?)");
    send_all(peer.fd(), &n, sizeof n, where);
    send_all(peer.fd(), payload.data(), payload.size(), where);
    ++served;
  }
  return payload;
}

std::string join(const LaunchInfo& info, int timeout_s) {
  const std::string where = address(info);
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const std::string port = std::to_string(info.master_port);
  if (const int rc = getaddrinfo(info.master_addr.c_str(), port.c_str(), &hints, &found); rc != 0)
    throw Error("environment", "MASTER_ADDR", "a host name or address",
                info.master_addr + " (" + gai_strerror(rc) + ")");
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(found, freeaddrinfo);
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    for (addrinfo* a = found; a; a = a->ai_next) {
      Socket s(socket(a->ai_family, a->ai_socktype, a->ai_protocol));
      if (s.fd() < 0 || connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0) continue;
      const int32_t rank = info.rank;
      send_all(s.fd(), &rank, sizeof rank, where);
      uint64_t n = 0;
      recv_all(s.fd(), &n, sizeof n, where);
      if (n > (1u << 20))
        throw Error("rendezvous " + where, "payload", "at most 1 MiB", std::to_string(n));
      std::string payload(n, '\0');
      recv_all(s.fd(), payload.data(), n, where);
      return payload;
    }
    if (Clock::now() > deadline)
      throw Error("rendezvous " + where, "rank 0",
                  "listening within " + std::to_string(timeout_s) + " s", "no answer");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

std::string rendezvous_broadcast(const LaunchInfo& info, const std::string& payload,
                                 int timeout_s) {
  return info.rank == 0 ? serve(info, payload, timeout_s) : join(info, timeout_s);
}

}  // namespace nh
