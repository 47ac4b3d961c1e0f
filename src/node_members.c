/* node_members.c - the configuration as the node sees it (see
 * node_internal.h): members with their addresses, who may dial us and how
 * a removed member learns it, bootstrap and the cluster id, removal,
 * promotion and leadership transfer, mandi registration and joins. */
#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "node_internal.h"

static char *meta_str(const struct json_val *o, bool ok, const char *k);
static char *make_meta(const char *name, const char *raft, const char *http,
                       const char *grpc, uint64_t inc);
static uint64_t meta_inc(const char *meta);
static bool plausible_addr(const char *a);
static void take_early(struct member *m);
static bool has_self(const struct raft_conf *c);
static struct member *member_by_name(const char *name);
static int leader_only(void);
static const char *leader_addr(bool http);
static uint64_t cluster_id_of(struct cfg_peer *peers, size_t n);
static void on_mandi_done(const struct mandi_result *res, void *data);
static void on_joins(const struct mandi_result *res, void *data);
/* Non-voters in the configuration at once: a join request beyond them
 * waits (etcd allows one learner by default). */
#define MEMBERS_MAX_NONVOTERS 2
static void post_join(void);
uint64_t members_name_to_id(const char *name)
{
    uint64_t id = pz_hash(name, strlen(name), NAME_SEED);
    return id ? id : 1;
}

/* --- members ---------------------------------------------------------- */

void members_free_one(struct member *m)
{
    pz_free(m->name);
    pz_free(m->raft);
    pz_free(m->http);
    pz_free(m->grpc);
}

struct member *members_find(uint64_t id)
{
    for (size_t i = 0; i < nd->n_members; i++)
        if (nd->members[i].id == id)
            return &nd->members[i];
    return NULL;
}

/* Member k of a meta document (a string), or "" (no such member, not a
 * string, a NUL inside, or the document did not parse: ok false). */
static char *meta_str(const struct json_val *o, bool ok, const char *k)
{
    struct json_val v;
    if (!ok || !json_get(o, k, &v) || v.type != JSON_STRING)
        return pz_strdup("");
    size_t len;
    char *str = json_strdup(&v, &len);
    if (memchr(str, '\0', len) != NULL) {
        pz_free(str);
        return pz_strdup("");
    }
    return str;
}

/* A member's meta in configuration entries: JSON with its name, the
 * addresses known when it was added and, for a node that joined, the
 * incarnation of its data dir (a decimal string; founders have none). */
static char *make_meta(const char *name, const char *raft, const char *http,
                       const char *grpc, uint64_t inc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "raft", raft);
    if (http)
        cJSON_AddStringToObject(o, "http", http);
    if (grpc)
        cJSON_AddStringToObject(o, "grpc", grpc);
    if (inc != 0) {
        char num[24];
        snprintf(num, sizeof num, "%llu", (unsigned long long)inc);
        cJSON_AddStringToObject(o, "inc", num);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *r = pz_strdup(s);
    cJSON_free(s);
    return r;
}

/* The incarnation a meta names: 0 when it names none or something that
 * is not a decimal number. */
static uint64_t meta_inc(const char *meta)
{
    struct json_val o;
    if (meta == NULL || json_parse(meta, strlen(meta), &o) < 0)
        return 0;
    char *s = meta_str(&o, true, "inc");
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    bool ok = s[0] >= '0' && s[0] <= '9' && *end == '\0' && errno == 0;
    pz_free(s);
    return ok ? (uint64_t)v : 0;
}

void members_conf_name(uint64_t id, char *name, size_t len)
{
    const struct raft_conf *c = raft_conf_current(nd->raft, NULL);
    const struct raft_server *s = raft_conf_get(c, id);
    const struct raft_removed *rm = s ? NULL : raft_conf_removed(c, id);
    const char *meta = s ? s->meta : rm ? rm->meta : NULL;
    struct json_val o;
    bool ok = meta && json_parse(meta, strlen(meta), &o) == 0;
    char *str = meta_str(&o, ok, "name");
    snprintf(name, len, "%s", str);
    pz_free(str);
}

/* c has this node: its id, with its data dir's incarnation. */
static bool has_self(const struct raft_conf *c)
{
    const struct raft_server *s = raft_conf_get(c, nd->id);
    return s != NULL && meta_inc(s->meta) == nd->incarnation;
}

/* Rebuild the member list from the current configuration, keeping the
 * addresses learned from handshakes, and tell the transport. */
void members_refresh(void)
{
    uint64_t conf_index = 0;
    const struct raft_conf *conf = raft_conf_current(nd->raft, &conf_index);
    /* The entry this node is a member from, as far as this log says (the
     * first that has it here, or a later one after a restart). */
    if (!has_self(conf))
        nd->member_since = 0;
    else if (nd->member_since == 0)
        nd->member_since = conf_index ? conf_index : 1;
    struct member *ms = pz_calloc(conf->n ? conf->n : 1, sizeof *ms);
    for (size_t i = 0; i < conf->n; i++) {
        const struct raft_server *s = &conf->servers[i];
        struct member *m = &ms[i];
        struct member *old = members_find(s->id);
        const char *meta = s->meta ? s->meta : "";
        struct json_val o;
        bool ok = json_parse(meta, strlen(meta), &o) == 0;
        m->id = s->id;
        m->voter = s->voter;
        m->name = meta_str(&o, ok, "name");
        m->raft = meta_str(&o, ok, "raft");
        m->http = meta_str(&o, ok, "http");
        m->grpc = meta_str(&o, ok, "grpc");
        m->inc = meta_inc(meta);
        /* What a handshake told of this incarnation of the member. */
        bool same = old && old->inc == m->inc;
        if (same && old->http[0] && !m->http[0]) {
            pz_free(m->http);
            m->http = pz_strdup(old->http);
        }
        if (same && old->grpc[0] && !m->grpc[0]) {
            pz_free(m->grpc);
            m->grpc = pz_strdup(old->grpc);
        }
        if (old)
            m->caught_up = old->caught_up;
        m->told = (same && old->told) || (m->http[0] && m->grpc[0]);
        if (!m->told)
            take_early(m);
        if (s->id != nd->id && m->raft[0])
            NIO(set_peer, s->id, m->raft);
    }
    /* Peers gone from the configuration: their names are remembered for
     * the log line when the change commits (members_conf_committed). */
    for (size_t i = 0; i < nd->n_members; i++) {
        bool kept = false;
        for (size_t j = 0; j < conf->n; j++)
            kept |= conf->servers[j].id == nd->members[i].id;
        if (kept) {
            members_free_one(&nd->members[i]);
            continue;
        }
        /* The peer link stays until the change commits: a leader that
         * removes itself still needs the acknowledgements. */
        if (nd->n_departed == PZ_ARRAY_SIZE(nd->departed)) {
            members_free_one(&nd->departed[0]);
            memmove(&nd->departed[0], &nd->departed[1],
                    sizeof nd->departed - sizeof nd->departed[0]);
            nd->n_departed--;
        }
        nd->departed[nd->n_departed++] = nd->members[i];
    }
    pz_free(nd->members);
    nd->members = ms;
    nd->n_members = conf->n;
}

/* A client address a peer announced: "host:port" with a port, printable,
 * or it is not taken (forwarding would dial it). */
static bool plausible_addr(const char *a)
{
    char host[256];
    int port;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return false;
    return pz_split_hostport(a, host, sizeof host, &port) == 0 && port > 0;
}

/* A member's client addresses, from the reply of a link we dialed. */
static void take_addrs(struct member *m, const char *http, const char *grpc)
{
    m->told = true;
    if (http && plausible_addr(http) && strcmp(m->http, http) != 0) {
        pz_free(m->http);
        m->http = pz_strdup(http);
    }
    if (grpc && plausible_addr(grpc) && strcmp(m->grpc, grpc) != 0) {
        pz_free(m->grpc);
        m->grpc = pz_strdup(grpc);
    }
}

/* Forgets early handshake i; the rest stay oldest first. */
static void drop_early(size_t i)
{
    members_free_one(&nd->early[i]);
    memmove(&nd->early[i], &nd->early[i + 1],
            (nd->n_early - i - 1) * sizeof nd->early[0]);
    nd->n_early--;
}

/* A member new to our configuration that we had dialed already, at the
 * Raft address the configuration gives it, while it was not a member to
 * us (a joining node dials its leader before it knows the members): what
 * that handshake told. Taken once. */
static void take_early(struct member *m)
{
    for (size_t i = 0; i < nd->n_early; i++) {
        struct member *e = &nd->early[i];
        if (e->id != m->id || strcmp(e->raft, m->raft) != 0)
            continue;
        take_addrs(m, e->http, e->grpc);
        drop_early(i);
        return;
    }
}

/* The transport learned a peer's addresses: its client addresses from the
 * reply of a member we dialed at its configured Raft address (dialed), or,
 * while this node is joining and knows no configuration, the Raft address
 * of a member that dialed us, so that we can answer it. What a dialer says
 * of itself is never taken once we have a configuration: a stranger could
 * otherwise redirect our forwarding or our replies. */
void members_on_peer_info(void *data, uint64_t id, bool dialed,
                         const char *name, const char *raft, const char *http,
                         const char *grpc)
{
    PZ_UNUSED(data);
    PZ_UNUSED(name);
    if (!dialed) {
        /* An id we have no configured address for: joining, or a member
         * added after what our log holds (maybe our leader). */
        if (members_find(id) == NULL && raft && plausible_addr(raft) &&
            id != nd->id)
            NIO(set_peer, id, raft);
        return;
    }
    struct member *m = members_find(id);
    if (m != NULL) {
        take_addrs(m, http, grpc);
        if (id == nd->leader)
            core_leader_waits_wake(); /* writes can be forwarded now */
        return;
    }
    /* Not a member (yet): kept for members_refresh (take_early), the
     * latest per id, the oldest dropped when full. */
    if (id == nd->id || raft == NULL)
        return;
    size_t i = 0;
    while (i < nd->n_early && nd->early[i].id != id)
        i++;
    if (i == PZ_ARRAY_SIZE(nd->early))
        i = 0;
    if (i < nd->n_early)
        drop_early(i);
    struct member *e = &nd->early[nd->n_early++];
    *e = (struct member){.id = id,
                         .name = pz_strdup(""),
                         .raft = pz_strdup(raft),
                         .http = pz_strdup(""),
                         .grpc = pz_strdup("")};
    take_addrs(e, http, grpc);
}

/* A joining node learned its cluster's id from the first member that
 * dialed it: keep it, so that a restart presents the same one. It must be
 * on disk before the node acknowledges anything: one that came back from a
 * power cut with a log and cluster id 0 would take the id of whichever
 * cluster dialed it first. A joining node has received nothing before its
 * first contact, so its store has no write in flight then and the id is
 * written (and synced) here, before the transport reads the link's first
 * message. The deferred save is only for a store busy at that moment;
 * acknowledgements could go out ahead of it. */
void members_save_cluster_id(void *data, uint64_t id)
{
    PZ_UNUSED(data);
    nd->cluster_id = id;
    if (NIO(store_busy)) {
        nd->cluster_id_unsaved = true; /* saved after the write */
        return;
    }
    if (NIO(store_meta_set, id, 0, NULL) < 0) {
        core_fatal("cannot record the cluster id: %s",
                   NIO(store_errmsg));
    }
}

/* --- removal --------------------------------------------------------------
 * A member removed from the configuration no longer hears from the leader
 * (it is not replicated to once the change is appended), so it would never
 * learn that it was removed. It does when it next dials a member: its
 * election timer fires and it asks for votes, or it redials the leader
 * whose link to it closed at the commit. A member whose committed
 * configuration remembers the removal (raft_conf_removed: the last 32,
 * kept by every later configuration, so a restarted leader or a node
 * restored from a snapshot knows them too) answers with the REMOVED
 * refusal and the index of the entry that removed it
 * (members_check_peer), over the authenticated peer link. The removed
 * node stops unless it knows a newer configuration (it was added again).
 *
 * Ids come from names, so a node wiped and started again under the same
 * name has the same id. What tells the two apart is the incarnation: a
 * random number a joining node draws once for its data dir, sent with
 * its join request and written into its member meta (founders, which
 * join by initial-cluster, have 0). A node takes configuration entries
 * as its own only when they name its id with its incarnation: replaying
 * the removal of an earlier incarnation does not stop it, and a join
 * request from the removed incarnation is stale. */

bool members_has_self(void)
{
    struct member *m = members_find(nd->id);
    return m != NULL && m->inc == nd->incarnation;
}

/* Who is dialing us, or answering our dial (transport_config.check_peer):
 *  - a member: the id with its incarnation;
 *  - removed: the incarnation a committed configuration removed (even if
 *    the id is a member again: the old machine is told);
 *  - another incarnation: a member's id with another data dir, when our
 *    configuration is at least as new as the entry the peer says it is a
 *    member from: a node wiped and restarted under a member's name (it
 *    says 0) or an old incarnation;
 *  - a stranger otherwise, our log being behind (a member added since,
 *    or re-added, maybe our leader). */
int members_check_peer(void *data, uint64_t id, uint64_t incarnation,
                       uint64_t member_since, uint64_t *conf_index,
                       uint64_t *conf_term)
{
    PZ_UNUSED(data);
    if (nd->n_members == 0)
        return TRANSPORT_PEER_JOINING;
    struct member *m = members_find(id);
    if (m != NULL && m->inc == incarnation)
        return TRANSPORT_PEER_MEMBER;
    const struct raft_removed *rm = raft_conf_removed(&nd->committed, id);
    if (rm != NULL && meta_inc(rm->meta) == incarnation) {
        *conf_index = rm->index;
        *conf_term = rm->term;
        return TRANSPORT_PEER_REMOVED;
    }
    uint64_t ours = 0;
    raft_conf_current(nd->raft, &ours);
    if (m != NULL && member_since <= ours)
        return TRANSPORT_PEER_OTHER_INCARNATION;
    return TRANSPORT_PEER_STRANGER;
}

uint64_t members_member_since(void *data)
{
    PZ_UNUSED(data);
    return nd->member_since;
}

/* Peer `from`, which we dialed, says its committed configuration entry
 * (conf_index, conf_term) removed us. Nothing authenticates the answer
 * beyond the address we dialed, so it is weighed:
 *  - a node that was never a member (this incarnation) in a committed
 *    configuration is joining: the removal was of an earlier one;
 *  - a node that leads, or heard from its leader within the election
 *    timeout, is a member in good standing: ignored (a removed node stops
 *    hearing from the leader once the removal is appended, so it soon
 *    listens);
 *  - a node whose newest configuration is newer than the one named,
 *    includes it and is committed here was added again: ignored;
 *  - otherwise it stops. */
void members_on_removed(void *data, uint64_t from, uint64_t conf_index,
                       uint64_t conf_term)
{
    PZ_UNUSED(data);
    if (nd->removed || !nd->open || nd->n_members == 0 ||
        !nd->self_committed)
        return;
    struct member *m = members_find(from);
    const char *who = m ? m->name : "a peer";
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    if (rs.lease) {
        pz_debug("%s says this node was removed (entry %llu), but it is in "
                 "touch with its leader: ignored",
                 who, (unsigned long long)conf_index);
        return;
    }
    uint64_t ours = 0;
    raft_conf_current(nd->raft, &ours);
    if (ours > conf_index && ours <= rs.commit && members_has_self()) {
        pz_info("%s says this node was removed by configuration entry "
                "%llu, but entry %llu, committed, has it: ignored",
                who, (unsigned long long)conf_index,
                (unsigned long long)ours);
        return;
    }
    nd->removed = true;
    pz_warn("removed from the cluster (configuration entry %llu, term "
            "%llu, as %s says): stopping",
            (unsigned long long)conf_index, (unsigned long long)conf_term,
            who);
    nd->stop("removed from the cluster");
}

/* c is now the committed configuration (entry index, 0 for a snapshot's):
 * say who left, close their links (they redial and are told), and stop
 * if this node, this incarnation, was removed. */
static void set_committed(struct raft_conf *c, uint64_t index)
{
    bool self_in = has_self(c);
    bool was_in = nd->self_committed;
    for (size_t i = 0; index > 0 && i < nd->committed.n; i++) {
        uint64_t id = nd->committed.servers[i].id;
        if (raft_conf_get(c, id) != NULL)
            continue;
        struct member *m = members_find(id);
        for (size_t j = 0; m == NULL && j < nd->n_departed; j++)
            if (nd->departed[j].id == id)
                m = &nd->departed[j];
        pz_info("member %s left the cluster (entry %llu)",
                m && m->name[0] ? m->name : "(unknown)",
                (unsigned long long)index);
        if (id != nd->id && members_find(id) == NULL)
            NIO(remove_peer, id);
    }
    raft_conf_free(&nd->committed);
    nd->committed = *c;
    raft_conf_init(c);
    nd->self_committed = self_in;
    if (was_in && !self_in && !nd->removed) {
        nd->removed = true;
        pz_warn("this node was removed from the cluster configuration "
                "(entry %llu): stopping",
                (unsigned long long)index);
        nd->stop("removed from the cluster");
    }
}

void members_conf_committed(const struct raft_entry *e)
{
    struct raft_conf c;
    if (raft_conf_decode(e->data, e->len, &c) < 0)
        return; /* the core refused it already; nothing to act on */
    set_committed(&c, e->index);
}

void members_snapshot_committed(const struct raft_conf *c)
{
    struct raft_conf copy;
    raft_conf_init(&copy);
    raft_conf_copy(&copy, c);
    /* Not a removal of this node: a snapshot comes from a leader that
     * has us, or from our own disk, where the entries replayed next say
     * the rest. */
    nd->self_committed = false;
    const struct raft_removed *rm = raft_conf_removed(c, nd->id);
    bool gone = !has_self(c) && rm != NULL &&
                meta_inc(rm->meta) == nd->incarnation;
    set_committed(&copy, 0);
    if (gone && !nd->removed) {
        nd->removed = true;
        if (!nd->open)
            return; /* node_init refuses to start */
        pz_warn("this node was removed from the cluster (entry %llu): "
                "stopping; to join again, start it with an empty data dir",
                (unsigned long long)rm->index);
        nd->stop("removed from the cluster");
    }
}


/* A non-voter is promoted once its log is within PROMOTE_SLACK entries of
 * the leader's, and the leader heard from it within two heartbeat
 * intervals, for PROMOTE_CHECKS consecutive seconds (it has caught up,
 * keeps up and is there now: a node that caught up and then stopped
 * would only make the quorum larger), so that it adds to the quorum
 * without slowing it. */
#define PROMOTE_SLACK 16
#define PROMOTE_CHECKS 2

void members_cron(void)
{
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    /* Out of touch: (re)open a link to every member, so that one that
     * removed us (a non-voter never campaigns) can say so. And a member
     * whose client addresses we do not know yet (a founding member is
     * configured with its Raft address only) is dialed until its
     * handshake tells them: a follower sends nothing to the other
     * followers, yet GET /cluster and etcd's MemberList name their
     * addresses. */
    bool all = !rs.lease;
    for (size_t i = 0; i < nd->n_members && !nd->removed; i++)
        if (nd->members[i].id != nd->id && (all || !nd->members[i].told))
            NIO(probe, nd->members[i].id);
    if (nd->role != RAFT_LEADER)
        return;
    for (size_t i = 0; i < nd->n_members; i++) {
        struct member *m = &nd->members[i];
        if (m->voter || m->id == nd->id)
            continue;
        uint64_t match = 0, quiet_ms = UINT64_MAX;
        for (size_t j = 0; j < rs.n_peers; j++) {
            if (rs.peers[j].id == m->id) {
                match = rs.peers[j].match;
                quiet_ms = rs.peers[j].last_contact * nd->tick_ms;
            }
        }
        uint64_t recent_ms = 2 * (uint64_t)nd->cfg->heartbeat_interval_ms;
        if (match > 0 && match + PROMOTE_SLACK >= rs.last_index &&
            quiet_ms <= recent_ms)
            m->caught_up++;
        else
            m->caught_up = 0;
        if (m->caught_up < PROMOTE_CHECKS)
            continue;
        struct raft_conf_change cc = {.type = RAFT_CC_PROMOTE, .id = m->id};
        int rv = raft_propose_conf(nd->raft, &cc, NULL, NULL);
        if (rv == 0)
            pz_info("promoting %s to voter (match %llu of %llu)", m->name,
                    (unsigned long long)match,
                    (unsigned long long)rs.last_index);
        break; /* one configuration change at a time */
    }
}

static struct member *member_by_name(const char *name)
{
    for (size_t i = 0; i < nd->n_members; i++)
        if (strcmp(nd->members[i].name, name) == 0)
            return &nd->members[i];
    return NULL;
}

static int leader_only(void)
{
    if (nd->role == RAFT_LEADER)
        return 0;
    return nd->leader ? PZ_ENOTLEADER : PZ_ENOLEADER;
}

int node_remove_member(struct node_req *req, const char *name,
                       node_req_cb cb)
{
    reqs_prepare(req, cb);
    int rv = leader_only();
    if (rv < 0)
        return rv;
    struct member *m = member_by_name(name);
    if (m == NULL)
        return PZ_ENOTFOUND;
    struct raft_conf_change cc = {.type = RAFT_CC_REMOVE, .id = m->id};
    rv = raft_propose_conf(nd->raft, &cc, &req->index, &req->term);
    if (rv == PZ_EBUSY) {
        /* Another change (or a transfer) is in flight, or we were elected
         * a moment ago and have not committed in our term yet: both end
         * within a round trip or two, so wait (up to request-timeout)
         * rather than make the caller retry. */
        pz_info("removing member %s: waiting for the change in progress",
                name);
        req->member = m->id;
        reqs_link(&nd->conf_wait, req);
        return 0;
    }
    if (rv < 0)
        return rv;
    pz_info("removing member %s", name);
    reqs_link_proposal(req);
    return 0;
}

/* Once a tick: start the removals that waited for a change in progress.
 * One whose node lost the leadership meanwhile completes with
 * PZ_ENOTLEADER or PZ_ENOLEADER, with nothing proposed: the caller starts
 * it over (http.c forwards it to the new leader). */
void members_conf_wait_retry(void)
{
    struct pz_queue *e = nd->conf_wait.next;
    while (e != &nd->conf_wait) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        int rv = leader_only();
        if (rv == 0) {
            struct raft_conf_change cc = {.type = RAFT_CC_REMOVE,
                                          .id = r->member};
            rv = raft_propose_conf(nd->raft, &cc, &r->index, &r->term);
            if (rv == PZ_EBUSY)
                continue;
        }
        if (rv < 0) {
            /* EINVAL: removed by someone else meanwhile (404), or it
             * would leave no voter (400, as when asked directly) */
            if (rv == PZ_EINVAL && members_find(r->member) == NULL)
                rv = PZ_ENOTFOUND;
            reqs_done(r, rv);
            continue;
        }
        pz_queue_remove(&r->q);
        r->queued = false;
        struct member *m = members_find(r->member);
        pz_info("removing member %s", m ? m->name : "?");
        reqs_link_proposal(r);
    }
}

int node_transfer(struct node_req *req, const char *name, node_req_cb cb)
{
    reqs_prepare(req, cb);
    int rv = leader_only();
    if (rv < 0)
        return rv;
    struct member *m = member_by_name(name);
    if (m == NULL)
        return PZ_ENOTFOUND;
    if (m->id == nd->id) {
        reqs_done(req, 0); /* already leads */
        return 0;
    }
    rv = raft_transfer_leader(nd->raft, m->id);
    if (rv < 0)
        return rv;
    pz_info("transferring leadership to %s", name);
    req->member = m->id;
    reqs_link(&nd->transfers, req);
    return 0;
}

static const char *leader_addr(bool http)
{
    if (nd->leader == 0 || nd->leader == nd->id)
        return NULL;
    struct member *m = members_find(nd->leader);
    if (m == NULL)
        return NULL;
    const char *a = http ? m->http : m->grpc;
    return a[0] ? a : NULL;
}

bool members_leader_told(void)
{
    if (nd->leader == 0 || nd->leader == nd->id)
        return nd->leader != 0;
    struct member *m = members_find(nd->leader);
    return m != NULL && m->told;
}

const char *node_leader_http_addr(void)
{
    return leader_addr(true);
}

const char *node_leader_grpc_addr(void)
{
    return leader_addr(false);
}

/* --- start and stop ----------------------------------------------------------- */

/* The cluster id of a static initial cluster: the same on every member,
 * derived from the member list alone (name=address pairs, sorted). */
static uint64_t cluster_id_of(struct cfg_peer *peers, size_t n)
{
    struct pz_buf b;
    pz_buf_init(&b);
    for (size_t i = 0; i < n; i++) { /* n is small: selection order */
        size_t best = SIZE_MAX;
        for (size_t j = 0; j < n; j++) {
            if (peers[j].name[0] == '\0')
                continue;
            if (best == SIZE_MAX || strcmp(peers[j].name, peers[best].name) < 0)
                best = j;
        }
        pz_buf_appendf(&b, "%s=%s,", peers[best].name, peers[best].addr);
        peers[best].name[0] = '\0';
    }
    uint64_t id = pz_hash(b.data, b.len, 0x636c7573746572ull);
    pz_buf_free(&b);
    return id ? id : 1;
}

int members_bootstrap(char *err, size_t errlen)
{
    const struct pz_config *cfg = nd->cfg;
    struct raft_conf conf;
    raft_conf_init(&conf);
    if (cfg->initial_cluster[0]) {
        struct cfg_peer *peers;
        size_t n;
        char why[256];
        if (cfg_parse_cluster(cfg->initial_cluster, &peers, &n, why,
                              sizeof why) < 0) {
            snprintf(err, errlen, "initial-cluster %s", why);
            return PZ_ECONFIG;
        }
        for (size_t i = 0; i < n; i++) {
            /* Only what every member knows goes into entry 1, so that all
             * of them write the identical entry. */
            char *meta = make_meta(peers[i].name, peers[i].addr, NULL, NULL, 0);
            raft_conf_add(&conf, members_name_to_id(peers[i].name), true, meta);
            pz_free(meta);
        }
        nd->cluster_id = cluster_id_of(peers, n);
        pz_free(peers);
        pz_info("forming cluster from initial-cluster (%zu members)", conf.n);
    } else {
        char *meta = make_meta(cfg->node_id, cfg->raft_addr, cfg->http_addr,
                               cfg->grpc_addr, 0);
        raft_conf_add(&conf, nd->id, true, meta);
        pz_free(meta);
        uint64_t r = pz_seed();
        nd->cluster_id = r ? r : 1;
        pz_info("bootstrapping a one-node cluster");
    }
    int rv = raft_bootstrap(nd->raft, &conf);
    raft_conf_free(&conf);
    if (rv < 0) {
        snprintf(err, errlen, "cannot bootstrap: %s", pz_strerror(rv));
        return rv;
    }
    rv = NIO(store_meta_set, nd->cluster_id, nd->id, cfg->node_id);
    if (rv < 0) {
        snprintf(err, errlen, "%s", NIO(store_errmsg));
        return rv;
    }
    return 0;
}

/* --- mandi: leader registration and joining ----------------------------------
 * Soft state only: replication, forwarding and failover never need mandi.
 * Every mandi-interval (members_mandi_cron), the leader publishes itself
 * (also at once when elected) and takes join requests: each unknown
 * requester is added as a non-voter, promoted by members_cron once it has
 * caught up, and its request deleted once it votes. A node that is not a
 * member posts its join request every mandi-interval until it sees itself
 * in the configuration. At most one request of each kind is in flight. */


static void on_mandi_done(const struct mandi_result *res, void *data)
{
    uint64_t *inflight = data;
    *inflight = 0;
    if (res->err == PZ_ECANCELED)
        return;
    if (res->err < 0)
        pz_debug("mandi: %s", pz_strerror(res->err));
    else if (res->http_status >= 300)
        pz_warn("mandi answered %d: %s", res->http_status, res->message);
}

void members_register_leader(void)
{
    if (!nd->mandi_on || nd->mandi_put)
        return;
    struct mandi_leader li;
    memset(&li, 0, sizeof li);
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    snprintf(li.id, sizeof li.id, "%s", nd->cfg->node_id);
    snprintf(li.addr, sizeof li.addr, "%s", nd->cfg->raft_addr);
    snprintf(li.http_addr, sizeof li.http_addr, "%s", nd->cfg->http_addr);
    snprintf(li.grpc_addr, sizeof li.grpc_addr, "%s", nd->cfg->grpc_addr);
    li.term = rs.term;
    nd->mandi_put =
        NIO(mandi_put_leader, &li, on_mandi_done, &nd->mandi_put);
}

/* Lines about the join requests mandi lists: its answer decides how many
 * there are (a mandi that lies, or whoever can post join requests, lists
 * up to 1024 each poll, each one new), so they share one limit,
 * JOIN_LOG_BURST lines per JOIN_LOG_WINDOW_MS, and the next line let
 * through counts those held back. */
#define JOIN_LOG_BURST 10
#define JOIN_LOG_WINDOW_MS 60000

static void join_log(enum pz_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void join_log(enum pz_log_level level, const char *fmt, ...)
{
    unsigned dropped;
    if (!pz_ratelimit(&nd->join_lines, NIO(now), JOIN_LOG_WINDOW_MS,
                      JOIN_LOG_BURST, &dropped))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (dropped)
        pz_log(level,
               "%s (and %u similar lines about join requests not "
               "logged)",
               msg, dropped);
    else
        pz_log(level, "%s", msg);
}

/* "" or, for n > 0, how many more requests of the same kind a poll
 * listed. */
static void more_requests(char *buf, size_t len, size_t n)
{
    if (n == 0)
        snprintf(buf, len, "%s", "");
    else
        snprintf(buf, len, "; %zu more such join request%s", n,
                 n == 1 ? "" : "s");
}

static void on_joins(const struct mandi_result *res, void *data)
{
    PZ_UNUSED(data);
    nd->mandi_poll = 0;
    if (res->err < 0 || res->http_status != 200 || nd->role != RAFT_LEADER)
        return;
    const struct raft_conf *conf = raft_conf_current(nd->raft, NULL);
    /* Stale requests and new data dirs: one line of each per poll, for
     * the first, counting the others. */
    char stale_id[PZ_ESCAPED_MAX] = "", new_dir_id[PZ_ESCAPED_MAX] = "";
    uint64_t stale_entry = 0;
    size_t n_stale = 0, n_new_dir = 0;
    for (size_t i = 0; i < res->n_joins; i++) {
        const struct mandi_join *j = &res->joins[i];
        uint64_t id = members_name_to_id(j->id);
        struct member *m = members_find(id);
        const struct raft_removed *rm = raft_conf_removed(conf, id);
        char eid[PZ_ESCAPED_MAX], eaddr[PZ_ESCAPED_MAX];
        pz_escape(eid, sizeof eid, j->id, strlen(j->id));
        pz_escape(eaddr, sizeof eaddr, j->addr, strlen(j->addr));
        /* Served (joined and voting), or stale (posted by an incarnation
         * removed since): the request goes. */
        bool served = m && m->voter && m->inc == j->incarnation;
        bool stale = !m && rm && meta_inc(rm->meta) == j->incarnation;
        if (served || stale) {
            if (stale && n_stale++ == 0) {
                snprintf(stale_id, sizeof stale_id, "%s", eid);
                stale_entry = rm->index;
            }
            if (!nd->mandi_del)
                nd->mandi_del = NIO(mandi_delete_join, j->id,
                                                   on_mandi_done,
                                                   &nd->mandi_del);
            continue;
        }
        if (m && m->inc != j->incarnation) {
            /* Another data dir under a member's name (a member wiped and
             * restarted): adding it would put a voter that forgot what it
             * acknowledged back into the quorums. */
            if (nd->join_warned != j->incarnation && n_new_dir++ == 0)
                snprintf(new_dir_id, sizeof new_dir_id, "%s", eid);
            nd->join_warned = j->incarnation;
            continue;
        }
        if (m)
            continue; /* catching up */
        size_t learners = 0;
        for (size_t k = 0; k < nd->n_members; k++)
            learners += !nd->members[k].voter;
        if (learners >= MEMBERS_MAX_NONVOTERS) {
            /* Each waits its turn in mandi: whoever can post join
             * requests (or a mandi that lies) adds no more than this to
             * the configuration. */
            if (nd->join_held != id)
                join_log(PZ_LOG_INFO,
                         "join request of %s waits: %zu non-voters are "
                         "catching up, at most %d at once (one that never "
                         "will: DELETE /cluster/members/ID)",
                         eid, learners, MEMBERS_MAX_NONVOTERS);
            nd->join_held = id;
            break;
        }
        char *meta = make_meta(j->id, j->addr, j->http_addr, j->grpc_addr,
                               j->incarnation);
        struct raft_conf_change cc = {
            .type = RAFT_CC_ADD_NONVOTER,
            .id = id,
            .meta = meta,
        };
        int rv = raft_propose_conf(nd->raft, &cc, NULL, NULL);
        pz_free(meta);
        if (rv == 0)
            pz_info("adding %s (%s) as a non-voter", eid, eaddr);
        else if (rv != PZ_EBUSY)
            join_log(PZ_LOG_WARNING, "cannot add %s: %s", eid, pz_strerror(rv));
        break; /* one change per poll (conf is stale after it) */
    }
    char more[64];
    if (n_stale) {
        more_requests(more, sizeof more, n_stale - 1);
        join_log(PZ_LOG_INFO,
                 "join request of %s is from the member removed by entry "
                 "%llu: ignored (a node joins again with an empty data "
                 "dir)%s",
                 stale_id, (unsigned long long)stale_entry, more);
    }
    if (n_new_dir) {
        more_requests(more, sizeof more, n_new_dir - 1);
        join_log(PZ_LOG_WARNING,
                 "%s asks to join with a new data dir, but %s is a member: "
                 "remove it first (see README, \"Replacing a node\")%s",
                 new_dir_id, new_dir_id, more);
    }
}

static void post_join(void)
{
    if (!nd->mandi_on || nd->mandi_join)
        return;
    struct mandi_join j;
    memset(&j, 0, sizeof j);
    snprintf(j.id, sizeof j.id, "%s", nd->cfg->node_id);
    snprintf(j.addr, sizeof j.addr, "%s", nd->cfg->raft_addr);
    snprintf(j.http_addr, sizeof j.http_addr, "%s", nd->cfg->http_addr);
    snprintf(j.grpc_addr, sizeof j.grpc_addr, "%s", nd->cfg->grpc_addr);
    j.incarnation = nd->incarnation;
    nd->mandi_join =
        NIO(mandi_post_join, &j, on_mandi_done, &nd->mandi_join);
}

void members_mandi_cron(void)
{
    if (nd->role == RAFT_LEADER) {
        members_register_leader();
        if (nd->mandi_on && !nd->mandi_poll)
            nd->mandi_poll = NIO(mandi_get_joins, on_joins, NULL);
    } else if (!members_has_self() && !nd->removed) {
        post_join();
    }
}
