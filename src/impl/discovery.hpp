namespace harmony {
namespace detail {

// >>discovery  backends from DNS: what a name's new address set changes (sans-IO)
// One name's backends (server::add_backend_name). Each resolution of the name is
// compared with the set before it, and the answer is what the registry must do:
// add a backend for an address that appeared, drain one whose address went, restore
// one whose address came back while it drained, re-weight one whose weight or role
// changed (an SRV record's weight or priority), and, at a sweep, remove the drained ones whose last
// connection has ended. A failed resolution changes nothing: the last good set is
// kept. It holds no OS type and does no I/O; the server applies its changes to the
// registry on an event loop.
struct discovered_address {
  resolved_address to;
  int weight = default_weight;
  bool backup = false;  // an SRV record of more than the lowest priority
};

class discovery {
 public:
  struct change {
    enum class kind { add, drain, restore, reweight, remove };
    kind what = kind::add;
    resolved_address to;
    int weight = default_weight;
    std::string id;  // the backend concerned; empty for add
    bool backup = false;
  };
  struct outcome {
    std::vector<change> changes;
    // Whether the name's state changed between resolving and failing: the one time
    // to log it (the first failure, and the first success after failures).
    bool news = false;
  };

  // A successful resolution: `fresh` is every address the name has now (repeats count once).
  outcome resolved(const std::vector<discovered_address>& fresh) {
    outcome out;
    out.news = state_ == state::failing;
    state_ = state::resolving;
    std::vector<bool> seen(members_.size(), false);
    for (const discovered_address& a : fresh) {
      std::size_t i = find(a.to);
      if (i < seen.size() && seen[i]) continue;  // a repeat
      if (i == members_.size()) {
        members_.push_back(member{a.to, a.weight, std::string(), false, a.backup});
        seen.push_back(true);
        out.changes.push_back(change{change::kind::add, a.to, a.weight, std::string(), a.backup});
        continue;
      }
      seen[i] = true;
      member& m = members_[i];
      if (m.gone) {
        m.gone = false;
        out.changes.push_back(change{change::kind::restore, m.to, m.weight, m.id, m.backup});
      }
      if (m.weight != a.weight || m.backup != a.backup) {
        m.weight = a.weight;
        m.backup = a.backup;
        out.changes.push_back(change{change::kind::reweight, m.to, m.weight, m.id, m.backup});
      }
    }
    for (std::size_t i = 0; i < members_.size(); ++i) {
      member& m = members_[i];
      if (seen[i] || m.gone) continue;
      m.gone = true;
      out.changes.push_back(change{change::kind::drain, m.to, m.weight, m.id, m.backup});
    }
    return out;
  }

  // A failed resolution: the set stays as it is.
  outcome failed() {
    outcome out;
    out.news = state_ != state::failing;
    state_ = state::failing;
    return out;
  }

  // The id of the backend added for `to` (after an add change). An address whose
  // add failed stays unbound and is retried at the next resolution.
  void bind(const resolved_address& to, std::string id) {
    std::size_t i = find(to);
    if (i < members_.size()) members_[i].id = std::move(id);
  }

  // Removes what has finished: a drained member whose backend has no open connection
  // left (a remove change), and silently forgets a member whose backend is unknown
  // (its add failed, or it was removed by other means), so that the next resolution
  // adds it again if the name still has it. `active(id)` is the backend's count of
  // open connections, negative when there is no such backend.
  template <class Active>
  std::vector<change> sweep(Active&& active) {
    std::vector<change> out;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      member& m = members_[i];
      int open = m.id.empty() ? -1 : active(std::string_view(m.id));
      if (open < 0) continue;
      if (m.gone && open == 0) {
        out.push_back(change{change::kind::remove, m.to, m.weight, m.id, m.backup});
        continue;
      }
      if (kept != i) members_[kept] = std::move(m);
      ++kept;
    }
    members_.resize(kept);
    return out;
  }

  bool failing() const noexcept { return state_ == state::failing; }
  // Members that get new connections (not gone), and all of them.
  std::size_t live() const noexcept {
    std::size_t n = 0;
    for (const member& m : members_) n += m.gone ? 0 : 1;
    return n;
  }
  std::size_t size() const noexcept { return members_.size(); }

 private:
  struct member {
    resolved_address to;
    int weight;
    std::string id;
    bool gone;  // no longer in the name's set: drained, removed at a sweep once idle
    bool backup;
  };
  enum class state { unknown, resolving, failing };

  std::size_t find(const resolved_address& to) const noexcept {
    for (std::size_t i = 0; i < members_.size(); ++i)
      if (members_[i].to == to) return i;
    return members_.size();
  }

  std::vector<member> members_;
  state state_ = state::unknown;
};

}  // namespace detail
}  // namespace harmony
