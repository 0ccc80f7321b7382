// Command ksit-manager is a test stand-in for the KSIT controller-manager.
//
// It reconciles IntegrationTargets and Integrations the way ../../../shared/ksit-api.md
// describes the upstream controller (status fields, Ready conditions, requeue periods,
// the `ksit.io` leader Lease) so that ksit-exporter is tested against real
// controller-runtime behaviour and its real metrics. Cluster connectivity is simulated:
// a target is ready unless it carries the annotation test.ksit.io/ready: "false".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

const readyAnnotation = "test.ksit.io/ready"

var (
	integrationGVK = schema.GroupVersionKind{Group: "ksit.io", Version: "v1alpha1", Kind: "Integration"}
	targetGVK      = schema.GroupVersionKind{Group: "ksit.io", Version: "v1alpha1", Kind: "IntegrationTarget"}
)

// targetStatus and integrationStatus mirror the upstream status types; the objects
// themselves stay unstructured so the fixture needs no generated deep-copy code.
type targetStatus struct {
	Ready              bool               `json:"ready"`
	Message            string             `json:"message,omitempty"`
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	LastSyncTime       *metav1.Time       `json:"lastSyncTime,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
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
		leaderElect                                        bool
		p                                                  periods
	)
	// --kubeconfig is registered on flag.CommandLine by controller-runtime's config package.
	flag.StringVar(&namespaces, "namespaces", "", "comma-separated namespaces to watch (default: all)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "127.0.0.1:8082", "plain-HTTP address of the controller-runtime metrics")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "127.0.0.1:8081", "address of /healthz and /readyz")
	flag.BoolVar(&leaderElect, "leader-elect", false, "hold the ksit.io leader Lease before reconciling")
	flag.StringVar(&leaseNamespace, "leader-election-namespace", "", "namespace of the ksit.io Lease (default: first of --namespaces)")
	flag.DurationVar(&p.integration, "integration-requeue", 30*time.Second, "requeue period of Integrations")
	flag.DurationVar(&p.targetReady, "target-ready-requeue", 60*time.Second, "requeue period of ready IntegrationTargets")
	flag.DurationVar(&p.targetFailing, "target-failing-requeue", 30*time.Second, "requeue period of failing IntegrationTargets")
	flag.DurationVar(&p.flap, "flap-interval", 0, "if set, every interval toggles all targets between ready and failing (for demos)")
	zapOpts := zap.Options{Development: true}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	var watched []string
	if namespaces != "" {
		watched = strings.Split(namespaces, ",")
	}
	if leaseNamespace == "" && len(watched) > 0 {
		leaseNamespace = watched[0]
	}
	cacheOpts := cache.Options{}
	if len(watched) > 0 {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range watched {
			cacheOpts.DefaultNamespaces[ns] = cache.Config{}
		}
	}

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
	if err := setup(mgr, p); err != nil {
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
	log.Info("starting", "namespaces", watched, "leaderElect", leaderElect, "leaseNamespace", leaseNamespace)
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

func setup(mgr ctrl.Manager, p periods) error {
	c := mgr.GetClient()
	// Status writes change resourceVersion but not generation; filtering on generation
	// keeps a controller from re-triggering itself. The readiness annotation is metadata,
	// so targets also react to annotation changes.
	if err := ctrl.NewControllerManagedBy(mgr).
		For(newObject(targetGVK), builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Complete(&targetReconciler{client: c, periods: p}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(newObject(integrationGVK), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// A target's readiness decides the phase of the Integrations in its namespace.
		Watches(newObject(targetGVK), handler.EnqueueRequestsFromMapFunc(
			func(ctx context.Context, o client.Object) []reconcile.Request {
				return integrationsIn(ctx, c, o.GetNamespace())
			})).
		Complete(&integrationReconciler{client: c, periods: p})
}

func integrationsIn(ctx context.Context, c client.Client, namespace string) []reconcile.Request {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(integrationGVK.GroupVersion().WithKind("IntegrationList"))
	if err := c.List(ctx, list, client.InNamespace(namespace)); err != nil {
		ctrl.Log.Error(err, "listing Integrations", "namespace", namespace)
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, it := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: it.GetNamespace(), Name: it.GetName()}})
	}
	return reqs
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
	periods
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

func (r *targetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj := newObject(targetGVK)
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var st targetStatus
	if err := readStatus(obj, &st); err != nil {
		return ctrl.Result{}, err
	}
	cluster, _, _ := unstructured.NestedString(obj.Object, "spec", "clusterName")
	now := time.Now()
	flapDown, untilToggle := r.flapping(now)

	cond := metav1.Condition{Type: "Ready", Status: metav1.ConditionTrue, Reason: "ClusterReady",
		Message: fmt.Sprintf("cluster %s is reachable", cluster), ObservedGeneration: obj.GetGeneration()}
	switch {
	case obj.GetAnnotations()[readyAnnotation] == "false":
		cond.Status, cond.Reason = metav1.ConditionFalse, "ConnectionFailed"
		cond.Message = fmt.Sprintf("cannot connect to cluster %s (annotation %s is \"false\")", cluster, readyAnnotation)
	case flapDown:
		cond.Status, cond.Reason = metav1.ConditionFalse, "ConnectionFailed"
		cond.Message = fmt.Sprintf("cannot connect to cluster %s (--flap-interval failing slot)", cluster)
	}
	st.Ready = cond.Status == metav1.ConditionTrue
	st.Message = cond.Message
	st.ObservedGeneration = obj.GetGeneration()
	st.LastSyncTime = &metav1.Time{Time: now}
	meta.SetStatusCondition(&st.Conditions, cond)
	if err := writeStatus(ctx, r.client, obj, &st); err != nil {
		return ctrl.Result{}, err
	}

	after := r.targetFailing
	if st.Ready {
		after = r.targetReady
	}
	if untilToggle > 0 && untilToggle < after {
		after = untilToggle
	}
	return ctrl.Result{RequeueAfter: after}, nil
}

type integrationReconciler struct {
	client client.Client
	periods
}

func (r *integrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	obj := newObject(integrationGVK)
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var st integrationStatus
	if err := readStatus(obj, &st); err != nil {
		return ctrl.Result{}, err
	}
	now := metav1.Now()
	// Like upstream, an Integration is first marked Initializing, then evaluated.
	if st.Phase == "" {
		st.Phase, st.Message, st.LastReconcileTime = "Initializing", "evaluating target clusters", &now
		st.ObservedGeneration = obj.GetGeneration()
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: "Ready", Status: metav1.ConditionUnknown,
			Reason: "Initializing", Message: st.Message, ObservedGeneration: obj.GetGeneration()})
		return ctrl.Result{RequeueAfter: time.Millisecond}, writeStatus(ctx, r.client, obj, &st)
	}

	ready, err := r.targetReadiness(ctx, obj.GetNamespace())
	if err != nil {
		return ctrl.Result{}, err
	}
	clusters, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "targetClusters")
	previous := map[string]clusterStatus{}
	for _, cs := range st.ClusterStatuses {
		previous[cs.Name] = cs
	}
	st.ClusterStatuses = nil
	var down []string
	for _, name := range clusters {
		cs := clusterStatus{Name: name, LastSeen: previous[name].LastSeen}
		t, found := ready[name]
		switch {
		case !found:
			cs.Message = fmt.Sprintf("no IntegrationTarget with clusterName %s", name)
		case !t.Ready:
			cs.Message = t.Message
		default:
			cs.Connected, cs.LastSeen, cs.Message = true, &now, "connected"
		}
		if !cs.Connected {
			down = append(down, name)
		}
		st.ClusterStatuses = append(st.ClusterStatuses, cs)
	}

	cond := metav1.Condition{Type: "Ready", ObservedGeneration: obj.GetGeneration()}
	if len(down) == 0 {
		st.Phase, st.Message = "Running", fmt.Sprintf("all %d target clusters connected", len(clusters))
		cond.Status, cond.Reason = metav1.ConditionTrue, "AllClustersConnected"
	} else {
		st.Phase, st.Message = "Failed", fmt.Sprintf("clusters not connected: %s", strings.Join(down, ", "))
		cond.Status, cond.Reason = metav1.ConditionFalse, "ClustersNotConnected"
	}
	cond.Message = st.Message
	meta.SetStatusCondition(&st.Conditions, cond)
	st.LastReconcileTime = &now
	st.ObservedGeneration = obj.GetGeneration()
	return ctrl.Result{RequeueAfter: r.integration}, writeStatus(ctx, r.client, obj, &st)
}

// targetReadiness maps spec.clusterName to the status of the IntegrationTarget naming it.
func (r *integrationReconciler) targetReadiness(ctx context.Context, namespace string) (map[string]targetStatus, error) {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(targetGVK.GroupVersion().WithKind("IntegrationTargetList"))
	if err := r.client.List(ctx, list, client.InNamespace(namespace)); err != nil {
		return nil, err
	}
	out := map[string]targetStatus{}
	for i := range list.Items {
		name, _, _ := unstructured.NestedString(list.Items[i].Object, "spec", "clusterName")
		var st targetStatus
		if err := readStatus(&list.Items[i], &st); err != nil {
			return nil, err
		}
		// Several targets may name one cluster; any ready one makes it reachable.
		if prev, seen := out[name]; !seen || (!prev.Ready && st.Ready) {
			out[name] = st
		}
	}
	return out, nil
}
