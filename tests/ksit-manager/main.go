// Command ksit-manager is a test stand-in for the KSIT controller-manager.
//
// By default it behaves as docs/upstream.md, "The manager", describes: upstream's
// controller-runtime (v0.16.3, so /metrics has upstream's label sets: workqueue_* carry
// `name` only), reconcilers with no predicates (every update, status writes included,
// triggers a reconcile), the same status fields, reasons and fixed requeue periods (30 s,
// 60 s, 30 s), the ksit.io finalizer (whose update turns `enabled: false` back into true), no
// observedGeneration on the disabled and auto-install-failure paths, no
// status.clusterStatuses, no ksit_* families on /metrics, all namespaces watched and the
// leader Lease in the namespace of its service account. An IntegrationTarget is checked as
// upstream checks it: Secret `<clusterName>-kubeconfig` in its namespace (SecretNotFound),
// its `kubeconfig` key (InvalidSecret, never requeued), a client built from those bytes
// (RegistrationFailed) and a real GET /version on the API server it names
// (ConnectionFailed), else ClusterReady. Auto-install always fails on a cluster.
//
// Deviations from upstream exist only behind flags, so a test that wants one names it:
// --namespaces and --leader-election-namespace (tests run outside a pod, several managers
// at once), the requeue periods, --flap-interval (demos: forces ConnectionFailed every other
// interval) and --write-cluster-statuses.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// Upstream's finalizer on Integrations.
const finalizer = "ksit.io/finalizer"

var (
	integrationGVK = schema.GroupVersionKind{Group: "ksit.io", Version: "v1alpha1", Kind: "Integration"}
	targetGVK      = schema.GroupVersionKind{Group: "ksit.io", Version: "v1alpha1", Kind: "IntegrationTarget"}
)

// targetStatus and integrationStatus mirror the upstream status types, omitempty included
// (so a target that is not ready has no `ready` field); the objects themselves stay
// unstructured so the fixture needs no generated deep-copy code.
type targetStatus struct {
	Ready        bool               `json:"ready,omitempty"`
	Message      string             `json:"message,omitempty"`
	LastSyncTime *metav1.Time       `json:"lastSyncTime,omitempty"`
	Conditions   []metav1.Condition `json:"conditions,omitempty"`
}

type clusterStatus struct {
	Name      string       `json:"name"`
	Connected bool         `json:"connected"`
	LastSeen  *metav1.Time `json:"lastSeen,omitempty"`
	Message   string       `json:"message,omitempty"`
}

type integrationStatus struct {
	Phase              string             `json:"phase,omitempty"`
	Message            string             `json:"message,omitempty"`
	LastReconcileTime  *metav1.Time       `json:"lastReconcileTime,omitempty"`
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
	ClusterStatuses    []clusterStatus    `json:"clusterStatuses,omitempty"`
}

type periods struct {
	integration   time.Duration
	targetReady   time.Duration
	targetFailing time.Duration
	flap          time.Duration
}

func main() {
	var (
		namespaces, metricsAddr, probeAddr, leaseNamespace string
		leaderElect, writeClusterStatuses                  bool
		p                                                  periods
	)
	// --kubeconfig is registered on flag.CommandLine by controller-runtime's config package.
	flag.StringVar(&namespaces, "namespaces", "", "test only: comma-separated namespaces to watch (default: all, as upstream)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "127.0.0.1:8082", "plain-HTTP address of the controller-runtime metrics")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "127.0.0.1:8081", "address of /healthz and /readyz")
	flag.BoolVar(&leaderElect, "leader-elect", false, "hold the ksit.io leader Lease before reconciling")
	flag.StringVar(&leaseNamespace, "leader-election-namespace", "",
		"test only: namespace of the ksit.io Lease (default: the service account's, as upstream; outside a pod --leader-elect then fails)")
	flag.DurationVar(&p.integration, "integration-requeue", 30*time.Second, "requeue period of Integrations")
	flag.DurationVar(&p.targetReady, "target-ready-requeue", 60*time.Second, "requeue period of ready IntegrationTargets")
	flag.DurationVar(&p.targetFailing, "target-failing-requeue", 30*time.Second, "requeue period of failing IntegrationTargets")
	flag.DurationVar(&p.flap, "flap-interval", 0,
		"not upstream (demos): if set, every other interval a target whose cluster answered is reported ConnectionFailed anyway")
	flag.BoolVar(&writeClusterStatuses, "write-cluster-statuses", false,
		"not upstream: also write status.clusterStatuses of Integrations (upstream's type has the field, its manager never writes it)")
	zapOpts := zap.Options{Development: true}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	var watched []string
	if namespaces != "" {
		watched = strings.Split(namespaces, ",")
	}
	cacheOpts := cache.Options{}
	if len(watched) > 0 {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range watched {
			cacheOpts.DefaultNamespaces[ns] = cache.Config{}
		}
	}

	// An empty LeaderElectionNamespace makes controller-runtime read the service-account
	// namespace file, which is what upstream (which has no flag for it) relies on.
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Cache: cacheOpts,
		// Serve reads of the unstructured ksit.io objects from the informer cache, as a
		// typed controller would, instead of a GET per reconcile.
		Client:                  client.Options{Cache: &client.CacheOptions{Unstructured: true}},
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr, SecureServing: false},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "ksit.io",
		LeaderElectionNamespace: leaseNamespace,
		// Tests start and stop managers often; releasing the Lease lets the next one lead at once.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "creating manager")
		os.Exit(1)
	}
	if err := setup(mgr, p, writeClusterStatuses); err != nil {
		log.Error(err, "creating controllers")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "adding healthz check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "adding readyz check")
		os.Exit(1)
	}
	log.Info("starting", "namespaces", watched, "leaderElect", leaderElect, "leaseNamespace", leaseNamespace,
		"writeClusterStatuses", writeClusterStatuses)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "running manager")
		os.Exit(1)
	}
}

func newObject(gvk schema.GroupVersionKind) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(gvk)
	return u
}

func setup(mgr ctrl.Manager, p periods, writeClusterStatuses bool) error {
	c := mgr.GetClient()
	// As upstream (pkg/controller/reconciler.go, SetupWithManager): For() alone, no
	// predicates, no Owns or Watches. Every update, a status write included, triggers a
	// reconcile; a write that changes nothing (lastSyncTime has one-second precision) makes
	// no event, which is what ends the loop.
	if err := ctrl.NewControllerManagedBy(mgr).
		For(newObject(targetGVK)).
		Complete(&targetReconciler{client: c, secrets: mgr.GetAPIReader(), clusters: map[string]cachedCluster{}, periods: p}); err != nil {
		return err
	}
	// Like upstream, Integrations do not watch targets: a target's change shows at the
	// next requeue.
	return ctrl.NewControllerManagedBy(mgr).
		For(newObject(integrationGVK)).
		Complete(&integrationReconciler{client: c, periods: p, writeClusterStatuses: writeClusterStatuses})
}

// readStatus decodes .status into out; a missing status leaves out zero.
func readStatus(u *unstructured.Unstructured, out any) error {
	m, _, err := unstructured.NestedMap(u.Object, "status")
	if err != nil || m == nil {
		return err
	}
	return runtime.DefaultUnstructuredConverter.FromUnstructured(m, out)
}

// writeStatus replaces .status with status (a pointer to one of the status types).
func writeStatus(ctx context.Context, c client.Client, u *unstructured.Unstructured, status any) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(status)
	if err != nil {
		return err
	}
	u.Object["status"] = m
	return c.Status().Update(ctx, u)
}

type targetReconciler struct {
	client client.Client
	// Secrets are read uncached (one GET per reconcile, needing only `get`), so the
	// stand-in does not list and watch every Secret it may read as upstream's cache does.
	secrets client.Reader
	// The registered clusters by "<namespace>/<clusterName>", as upstream's ClusterManager
	// keys them. Only the target controller's one worker touches it, so it needs no lock.
	clusters map[string]cachedCluster
	periods
}

// cachedCluster is a registered cluster: the kubeconfig it was built from and its client.
type cachedCluster struct {
	kubeconfig []byte
	clientset  kubernetes.Interface
}

// register is upstream's ClusterManager.AddCluster: a rest config and a clientset from the
// kubeconfig bytes. Upstream rebuilds them on every reconcile; the result is the same when
// the bytes are, so they are rebuilt only when the bytes change (a Secret rewritten to name
// another server takes effect on the next reconcile). A failure leaves the entry as it was.
func (r *targetReconciler) register(namespace, cluster string, kubeconfig []byte) (kubernetes.Interface, error) {
	key := namespace + "/" + cluster
	if c, ok := r.clusters[key]; ok && bytes.Equal(c.kubeconfig, kubeconfig) {
		return c.clientset, nil
	}
	config, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("failed to parse kubeconfig: %w", err)
	}
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("failed to create kubernetes client: %w", err)
	}
	r.clusters[key] = cachedCluster{kubeconfig: kubeconfig, clientset: clientset}
	return clientset, nil
}

// flapping reports whether the current --flap-interval slot is a failing one, and how
// long until the next toggle.
func (p periods) flapping(now time.Time) (bool, time.Duration) {
	if p.flap <= 0 {
		return false, 0
	}
	slot := now.UnixNano() / int64(p.flap)
	next := time.Unix(0, (slot+1)*int64(p.flap))
	return slot%2 == 1, next.Sub(now)
}

// notReady writes a failing status as upstream does on each failure path: ready false, the
// message in .message and in the Ready condition, the write's error ignored.
func (r *targetReconciler) notReady(ctx context.Context, obj *unstructured.Unstructured, st *targetStatus, reason, message string) {
	ctrl.LoggerFrom(ctx).Info("target not ready", "reason", reason, "message", message)
	st.Ready, st.Message = false, message
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: "Ready", Status: metav1.ConditionFalse,
		Reason: reason, Message: message})
	if err := writeStatus(ctx, r.client, obj, st); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "writing status", "reason", reason)
	}
}

// Reconcile follows upstream's IntegrationTargetReconciler step by step; it sets no
// observedGeneration on targets or their conditions, and lastSyncTime only when the cluster
// answered.
func (r *targetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj := newObject(targetGVK)
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			// Upstream forgets the cluster under the target's name, not its clusterName
			// (gone with the object); the same entry goes here.
			delete(r.clusters, req.Namespace+"/"+req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var st targetStatus
	if err := readStatus(obj, &st); err != nil {
		return ctrl.Result{}, err
	}
	cluster, _, _ := unstructured.NestedString(obj.Object, "spec", "clusterName")
	secretName := cluster + "-kubeconfig"
	secret := &corev1.Secret{}
	if err := r.secrets.Get(ctx, types.NamespacedName{Namespace: obj.GetNamespace(), Name: secretName}, secret); err != nil {
		// Any error, not only NotFound, is SecretNotFound upstream.
		ctrl.LoggerFrom(ctx).Error(err, "getting the kubeconfig Secret", "secret", secretName)
		r.notReady(ctx, obj, &st, "SecretNotFound", fmt.Sprintf("Kubeconfig secret %s not found", secretName))
		return ctrl.Result{RequeueAfter: r.targetFailing}, nil
	}
	kubeconfig, ok := secret.Data["kubeconfig"]
	if !ok {
		// Not requeued: only an update of the target brings it back; Secrets are not watched.
		r.notReady(ctx, obj, &st, "InvalidSecret", "Secret missing 'kubeconfig' key")
		return ctrl.Result{}, nil
	}
	clientset, err := r.register(obj.GetNamespace(), cluster, kubeconfig)
	if err != nil {
		r.notReady(ctx, obj, &st, "RegistrationFailed", fmt.Sprintf("Failed to register cluster: %v", err))
		return ctrl.Result{RequeueAfter: r.targetFailing}, nil
	}
	now := time.Now()
	flapDown, untilToggle := r.flapping(now)
	// With --flap-interval, every result is requeued by the next toggle at the latest.
	requeue := func(after time.Duration) ctrl.Result {
		if untilToggle > 0 {
			after = min(after, untilToggle)
		}
		return ctrl.Result{RequeueAfter: after}
	}
	// Upstream's SyncCluster: the cluster's version, read from its API server.
	_, err = clientset.Discovery().ServerVersion()
	switch {
	case err != nil:
		err = fmt.Errorf("failed to sync cluster: %w", err)
	case flapDown:
		err = errors.New("--flap-interval failing slot (a stand-in deviation: the cluster answered)")
	}
	if err != nil {
		r.notReady(ctx, obj, &st, "ConnectionFailed", fmt.Sprintf("Connection test failed: %v", err))
		return requeue(r.targetFailing), nil
	}
	st.Ready, st.Message = true, "Target cluster is connected and ready"
	st.LastSyncTime = &metav1.Time{Time: now}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: "Ready", Status: metav1.ConditionTrue,
		Reason: "ClusterReady", Message: "Successfully connected to target cluster"})
	if err := writeStatus(ctx, r.client, obj, &st); err != nil {
		return ctrl.Result{}, err
	}
	return requeue(r.targetReady), nil
}

type integrationReconciler struct {
	client client.Client
	periods
	writeClusterStatuses bool
}

// Reconcile follows upstream's order: deletion, finalizer, disabled, Initializing,
// auto-install, then the per-cluster checks.
func (r *integrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj := newObject(integrationGVK)
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if obj.GetDeletionTimestamp() != nil {
		if controllerutil.RemoveFinalizer(obj, finalizer) {
			return ctrl.Result{}, r.client.Update(ctx, obj)
		}
		return ctrl.Result{}, nil
	}
	if !controllerutil.ContainsFinalizer(obj, finalizer) {
		controllerutil.AddFinalizer(obj, finalizer)
		// Upstream's spec.enabled is a Go bool with omitempty: false is not sent, so the
		// CRD's default (true) comes back. Update decodes the answer into obj.
		if enabled, found, _ := unstructured.NestedBool(obj.Object, "spec", "enabled"); found && !enabled {
			unstructured.RemoveNestedField(obj.Object, "spec", "enabled")
		}
		if err := r.client.Update(ctx, obj); err != nil {
			return ctrl.Result{}, err
		}
	}
	var st integrationStatus
	if err := readStatus(obj, &st); err != nil {
		return ctrl.Result{}, err
	}
	// Writing `status` whole, as upstream's typed Status().Update does: the omitempty fields
	// it does not set stay as they were read.
	if enabled, found, _ := unstructured.NestedBool(obj.Object, "spec", "enabled"); found && !enabled {
		// No observedGeneration, no lastReconcileTime, no condition, no requeue.
		st.Phase, st.Message = "Failed", "Integration is disabled"
		return ctrl.Result{}, writeStatus(ctx, r.client, obj, &st)
	}
	if st.Phase == "" {
		st.Phase = "Initializing"
		if err := writeStatus(ctx, r.client, obj, &st); err != nil {
			return ctrl.Result{}, err
		}
	}

	ready, err := r.targetReadiness(ctx, obj.GetNamespace())
	if err != nil {
		return ctrl.Result{}, err
	}
	clusters, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "targetClusters")
	if autoInstall, _, _ := unstructured.NestedBool(obj.Object, "spec", "autoInstall", "enabled"); autoInstall {
		if err := autoInstallOn(clusters, ready); err != nil {
			// Upstream leaves observedGeneration and lastReconcileTime as they were and
			// returns the error, so controller-runtime retries with backoff.
			st.Phase, st.Message = "Failed", fmt.Sprintf("Auto-install failed: %v", err)
			if werr := writeStatus(ctx, r.client, obj, &st); werr != nil {
				ctrl.LoggerFrom(ctx).Error(werr, "writing status after auto-install failure")
			}
			return ctrl.Result{}, err
		}
	}

	now := metav1.Now()
	var failure error
	for _, name := range clusters {
		if !ready[name] {
			failure = fmt.Errorf("failed to get cluster config for %s: no ready IntegrationTarget with clusterName %s", name, name)
			break
		}
	}
	st.LastReconcileTime = &now
	st.ObservedGeneration = obj.GetGeneration()
	cond := metav1.Condition{Type: "Ready"}
	if failure == nil {
		st.Phase, st.Message = "Running", "Integration is running"
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, "ReconcileSucceeded", "Integration is healthy"
	} else {
		st.Phase, st.Message = "Failed", failure.Error()
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "ReconcileFailed", failure.Error()
	}
	meta.SetStatusCondition(&st.Conditions, cond)
	if r.writeClusterStatuses {
		st.ClusterStatuses = clusterStatuses(clusters, ready, st.ClusterStatuses, now)
	}
	return ctrl.Result{RequeueAfter: r.integration}, writeStatus(ctx, r.client, obj, &st)
}

// autoInstallOn fails as upstream's installer does here: a cluster without a ready target
// has no config, and the stand-in reaches no real cluster to install on.
func autoInstallOn(clusters []string, ready map[string]bool) error {
	for _, name := range clusters {
		if !ready[name] {
			return fmt.Errorf("failed to get config for cluster %s: no ready IntegrationTarget", name)
		}
		return fmt.Errorf("failed to install on cluster %s: the stand-in manager installs nothing", name)
	}
	return nil
}

// clusterStatuses is what --write-cluster-statuses writes: one entry per target cluster,
// lastSeen kept from the previous entry while the cluster is not connected.
func clusterStatuses(clusters []string, ready map[string]bool, previous []clusterStatus, now metav1.Time) []clusterStatus {
	seen := map[string]*metav1.Time{}
	for _, cs := range previous {
		seen[cs.Name] = cs.LastSeen
	}
	out := make([]clusterStatus, 0, len(clusters))
	for _, name := range clusters {
		cs := clusterStatus{Name: name, LastSeen: seen[name], Message: "no ready IntegrationTarget"}
		if ready[name] {
			cs.Connected, cs.LastSeen, cs.Message = true, &now, "connected"
		}
		out = append(out, cs)
	}
	return out
}

// targetReadiness maps spec.clusterName to whether a target in namespace naming it is ready.
func (r *integrationReconciler) targetReadiness(ctx context.Context, namespace string) (map[string]bool, error) {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(targetGVK.GroupVersion().WithKind("IntegrationTargetList"))
	if err := r.client.List(ctx, list, client.InNamespace(namespace)); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for i := range list.Items {
		name, _, _ := unstructured.NestedString(list.Items[i].Object, "spec", "clusterName")
		var st targetStatus
		if err := readStatus(&list.Items[i], &st); err != nil {
			return nil, err
		}
		// Several targets may name one cluster; any ready one makes it reachable.
		out[name] = out[name] || st.Ready
	}
	return out, nil
}
