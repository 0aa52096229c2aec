# The seed guide's "Content Generation Worker" and "Retry Failed Stages" examples
# (docs: ../shared/seed, "Complete Pipeline Example" and "Error Handling"), as written:
# only the import lines are changed, to point at this SDK and at the small stand-ins for
# the author's own application code in seed_app.py. Not reformatted on purpose.
# ruff: noqa
# mypy: ignore-errors
"""
content_worker.py

Background worker for processing content generation requests.
"""

import time
from vividly import RequestTracker
from vividly import gemini_breaker, nano_banana_breaker
from tests.docs.seed_app import CacheService
# The author's own application code the seed leaves out (and the guide's setup imports):
from tests.docs.seed_app import (  # noqa: F401
    CircuitBreakerError,
    Session,
    call_gemini_api,
    call_nano_banana_api,
    check_nano_banana_status,
    download_video,
    generate_thumbnail,
    process_content_request_from_stage,
    retrieve_oer_content,
    send_email,
    send_error_notification,
    student_email,
    student_id,
    traceback,
    upload_to_cdn,
)

def process_content_request(db: Session, request_id: str):
    """
    Process a content generation request through the entire pipeline.

    Pipeline stages:
    1. Validation
    2. RAG retrieval
    3. Script generation
    4. Video generation
    5. Video processing
    6. Notification
    """
    tracker = RequestTracker(db)
    cache = CacheService()

    try:
        # ==================== STAGE 1: Validation ====================
        with tracker.track_stage(request_id, "validation"):
            # Get request details
            status = tracker.get_request_status(request_id)
            topic = status["topic"]
            learning_objective = status["learning_objective"]

            # Validate inputs
            if not topic or len(topic) < 3:
                raise ValueError("Topic must be at least 3 characters")

            tracker.log_event(
                request_id,
                "validation_passed",
                "Request validation successful",
                stage_name="validation",
                severity="info"
            )

        # ==================== STAGE 2: RAG Retrieval ====================
        with tracker.track_stage(request_id, "rag_retrieval"):
            tracker.log_event(
                request_id,
                "api_call",
                "Querying Vector Search for OER content",
                stage_name="rag_retrieval",
                severity="info"
            )

            # Check cache first
            cache_key = f"rag_results:{topic}"
            cached_results = cache.get(cache_key)

            if cached_results:
                rag_results = cached_results
                tracker.log_event(
                    request_id,
                    "cache_hit",
                    "Retrieved results from cache",
                    stage_name="rag_retrieval",
                    severity="info"
                )
            else:
                # Perform RAG retrieval
                rag_results = retrieve_oer_content(
                    topic=topic,
                    learning_objective=learning_objective,
                    top_k=5
                )

                # Cache for 1 hour
                cache.set(cache_key, rag_results, ttl=3600)

                tracker.log_event(
                    request_id,
                    "rag_completed",
                    f"Retrieved {len(rag_results)} content chunks",
                    stage_name="rag_retrieval",
                    severity="info",
                    event_data={"chunks": len(rag_results)}
                )

        # ==================== STAGE 3: Script Generation ====================
        tracker.start_stage(request_id, "script_generation")

        try:
            tracker.log_event(
                request_id,
                "api_call",
                "Calling Gemini API for script generation",
                stage_name="script_generation",
                severity="info"
            )

            # Call Gemini with circuit breaker protection
            @gemini_breaker
            def generate_script():
                return call_gemini_api(
                    topic=topic,
                    learning_objective=learning_objective,
                    context=rag_results,
                )

            script = generate_script()

            tracker.complete_stage(
                request_id,
                "script_generation",
                output_data={
                    "script_length": len(script),
                    "word_count": len(script.split()),
                }
            )

            tracker.log_event(
                request_id,
                "script_generated",
                f"Generated {len(script.split())} word script",
                stage_name="script_generation",
                severity="info"
            )

        except CircuitBreakerError as e:
            tracker.fail_stage(
                request_id,
                "script_generation",
                "Gemini API circuit breaker open",
                error_details={"circuit_breaker": "gemini_api"}
            )
            raise

        # ==================== STAGE 4: Video Generation ====================
        tracker.start_stage(request_id, "video_generation")

        try:
            tracker.log_event(
                request_id,
                "api_call",
                "Calling Nano Banana API for video generation",
                stage_name="video_generation",
                severity="info"
            )

            # Call Nano Banana with circuit breaker
            @nano_banana_breaker
            def generate_video():
                return call_nano_banana_api(
                    script=script,
                    duration_minutes=5,
                    style="educational",
                )

            video_job_id = generate_video()

            # Poll for completion (simplified)
            max_wait = 300  # 5 minutes
            start_time = time.time()

            while time.time() - start_time < max_wait:
                video_status = check_nano_banana_status(video_job_id)

                if video_status["status"] == "completed":
                    video_url = video_status["video_url"]
                    break
                elif video_status["status"] == "failed":
                    raise Exception(f"Video generation failed: {video_status['error']}")

                tracker.log_event(
                    request_id,
                    "video_progress",
                    f"Video generation progress: {video_status['progress']}%",
                    stage_name="video_generation",
                    severity="info"
                )

                time.sleep(10)  # Poll every 10 seconds

            tracker.complete_stage(
                request_id,
                "video_generation",
                output_data={
                    "video_url": video_url,
                    "job_id": video_job_id,
                }
            )

        except CircuitBreakerError:
            tracker.fail_stage(
                request_id,
                "video_generation",
                "Nano Banana API circuit breaker open",
                error_details={"circuit_breaker": "nano_banana_api"}
            )
            raise

        # ==================== STAGE 5: Video Processing ====================
        with tracker.track_stage(request_id, "video_processing"):
            # Download video
            video_data = download_video(video_url)

            # Upload to Cloud Storage + CDN
            cdn_url = upload_to_cdn(
                video_data,
                filename=f"{request_id}.mp4"
            )

            # Generate thumbnail
            thumbnail_url = generate_thumbnail(video_data)

            tracker.log_event(
                request_id,
                "video_uploaded",
                f"Video uploaded to CDN: {cdn_url}",
                stage_name="video_processing",
                severity="info"
            )

        # ==================== STAGE 6: Notification ====================
        with tracker.track_stage(request_id, "notification"):
            # Send email to student
            send_email(
                to=student_email,
                template="content_ready",
                context={
                    "topic": topic,
                    "video_url": cdn_url,
                }
            )

            tracker.log_event(
                request_id,
                "notification_sent",
                f"Email sent to student",
                stage_name="notification",
                severity="info"
            )

        # ==================== Complete Request ====================
        tracker.complete_request(
            request_id,
            video_url=cdn_url,
            script_text=script,
            thumbnail_url=thumbnail_url,
        )

        print(f"✅ Request {request_id} completed successfully")

    except Exception as e:
        # Mark entire request as failed
        current_stage = tracker.get_request_status(request_id).get("current_stage", "unknown")

        tracker.fail_request(
            request_id,
            error_message=str(e),
            error_stage=current_stage,
            error_details={
                "exception_type": type(e).__name__,
                "traceback": traceback.format_exc(),
            }
        )

        print(f"❌ Request {request_id} failed at {current_stage}: {e}")

        # Send error notification to student
        send_error_notification(student_id, topic, error=str(e))

        raise


def retry_failed_request(db: Session, request_id: str):
    """Retry a failed request from the failed stage."""
    tracker = RequestTracker(db)

    status = tracker.get_request_status(request_id)

    if status["status"] != "failed":
        raise ValueError("Request is not in failed state")

    error_stage = status["error_stage"]

    # Check if retry is allowed
    if not tracker.retry_stage(request_id, error_stage):
        print(f"Max retries exceeded for {error_stage}")
        return False

    # Process from failed stage onwards
    process_content_request_from_stage(db, request_id, error_stage)
    return True
